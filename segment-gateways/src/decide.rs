//! Decisions for the gateway: Plan and Authorize asked of the policy engine over
//! mutual TLS.
//!
//! This is the one place that talks to the engine, so that the coming offline mode
//! (a signed policy bundle evaluated by the embedded `sekisho_policy_engine::Engine`
//! when the engine is unreachable or absent) slots in here without touching the
//! logon flow.

use sekisho_policy_engine::{Action, FactorSet, Via};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::policy_decision_client::PolicyDecisionClient;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The engine does not know the device (registered at the gateway only).
    #[error("the policy engine does not know device '{0}': register it there too (sekisho device register)")]
    UnknownDevice(String),
    /// The user vanished between Begin and Complete (a directory sync).
    #[error("the policy engine does not know user '{0}'")]
    UnknownUser(String),
    #[error("the policy engine refused the request: {0}")]
    Refused(String),
    #[error("the policy engine is unreachable or failed: {0}")]
    Unavailable(String),
}

/// What a decision is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub action: Action,
    pub via: Via,
    pub upstream: FactorSet,
    pub request_id: &'a str,
}

impl Subject<'_> {
    fn context(&self) -> Option<pb::DecisionContext> {
        Some(pb::DecisionContext {
            via: self.via.name().into(),
            upstream: names(self.upstream),
            hour: None,
        })
    }
}

pub fn names(set: FactorSet) -> Vec<String> {
    set.names().into_iter().map(String::from).collect()
}

#[derive(Debug, Clone)]
pub struct Authorized {
    pub allowed: bool,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
}

#[derive(Clone)]
pub struct Decider {
    engine: PolicyDecisionClient<Channel>,
}

impl Decider {
    pub fn remote(channel: Channel) -> Self {
        Decider {
            engine: PolicyDecisionClient::new(channel),
        }
    }

    /// The plan for `subject`, restricted to what the user enrolled on this tier.
    /// Unknown users are masked by the engine (a plausible plan, never NotFound).
    pub async fn plan(
        &self,
        subject: &Subject<'_>,
        enrolled: FactorSet,
        emergency_otp_active: bool,
    ) -> Result<pb::PlanResponse, DecideError> {
        let request = pb::PlanRequest {
            user: subject.user.into(),
            device: subject.device.into(),
            action: subject.action.name().into(),
            context: subject.context(),
            emergency_otp_active,
            request_id: subject.request_id.into(),
            enrolled: Some(pb::FactorSet {
                factors: names(enrolled),
            }),
            mask_unknown_user: true,
        };
        let mut engine = self.engine.clone();
        engine
            .plan(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(s, subject))
    }

    pub async fn authorize(
        &self,
        subject: &Subject<'_>,
        factors: FactorSet,
    ) -> Result<Authorized, DecideError> {
        let request = pb::AuthorizeRequest {
            user: subject.user.into(),
            device: subject.device.into(),
            action: subject.action.name().into(),
            factors: names(factors),
            context: subject.context(),
            request_id: subject.request_id.into(),
        };
        let mut engine = self.engine.clone();
        let r = engine
            .authorize(request)
            .await
            .map_err(|s| status_error(s, subject))?
            .into_inner();
        Ok(Authorized {
            allowed: r.decision == pb::Decision::Allow as i32,
            policy_ids: r.policy_ids,
            policy_version: r.policy_version,
        })
    }
}

fn status_error(status: tonic::Status, subject: &Subject<'_>) -> DecideError {
    match status.code() {
        tonic::Code::NotFound if status.message().starts_with("unknown device") => {
            DecideError::UnknownDevice(subject.device.into())
        }
        tonic::Code::NotFound => DecideError::UnknownUser(subject.user.into()),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            DecideError::Refused(status.message().into())
        }
        _ => DecideError::Unavailable(format!("{}: {}", status.code(), status.message())),
    }
}
