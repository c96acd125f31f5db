//! The endpoint agent: the client side of the `Logon` service, for whatever sits at
//! the PC (a Windows credential provider, a PAM module, the simulator, the CLI).
//!
//! A logon reads: [`Agent::begin`] returns the challenge (the factor sets this user
//! may present on this device, and nonces); the endpoint collects what the person
//! presents into a [`Presented`]; [`proofs_for`] / [`select_proofs`] turn it into
//! proofs (signing the nonces); [`Agent::complete`] (or [`Agent::unlock_complete`])
//! answers. [`Agent::logon`] and [`Agent::unlock`] do all of it in one call.
//!
//! The device identity is the mutual-TLS client certificate (its common name is the
//! device id), so nothing here names the device.

mod presented;
mod proofs;

use std::time::Duration;

use sekisho_policy_engine::FactorSet;
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::logon_client::LogonClient;
use tonic::transport::Channel;

use crate::tls::{self, ClientTls, ConnectError};

pub use presented::{
    covered, parse_templates, parse_vector, read_certificate_der, read_private_key_pem,
    read_templates, read_vector, Capture, CardKey, Presented,
};
pub use proofs::{choose_option, fallback_factors, proofs_for, select_proofs};

/// Why the agent could not get an answer. A denial is not an error: it is a
/// [`pb::LogonResult`] with decision deny.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The gateway refused the call itself (a device of another tier, a bad request,
    /// the gateway unreachable mid-call).
    #[error("gateway: {message} ({code:?})")]
    Rpc { code: tonic::Code, message: String },
    #[error("cannot read {path}: {error}")]
    Read {
        path: String,
        /// Not a `source`: the message already says it, and a chain printer would
        /// repeat it.
        error: std::io::Error,
    },
    #[error("{path}: not a usable feature vector: {why}")]
    BadVector { path: String, why: String },
    #[error("{path}: not a usable certificate: {why}")]
    BadCertificate { path: String, why: String },
    #[error("{path}: not a usable private key: {why}")]
    BadKey { path: String, why: String },
    /// The challenge lacks the nonce (`card`, `face`, `vein`) a proof must sign.
    #[error("the challenge has no '{factor}' nonce to sign")]
    MissingNonce { factor: &'static str },
    /// A proof was asked for a factor that was not presented.
    #[error("no {factor} was presented")]
    NotPresented { factor: &'static str },
    #[error("cannot sign the {factor} proof: {why}")]
    Sign { factor: &'static str, why: String },
}

impl From<tonic::Status> for AgentError {
    fn from(status: tonic::Status) -> Self {
        let message = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        AgentError::Rpc {
            code: status.code(),
            message,
        }
    }
}

/// What to start: `action` is `logon` (the default when empty), `unlock`,
/// `switch_operator` or `elevate`; `via` is `console` (default), `rdp` or
/// `lgwan_telework`; `upstream` the factors proven on the device a remote session
/// came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeginArgs {
    pub user: String,
    pub action: String,
    pub via: String,
    pub upstream: Vec<String>,
}

impl BeginArgs {
    pub fn new(user: impl Into<String>, action: impl Into<String>) -> Self {
        BeginArgs {
            user: user.into(),
            action: action.into(),
            ..BeginArgs::default()
        }
    }

    pub fn via(mut self, via: impl Into<String>) -> Self {
        self.via = via.into();
        self
    }
}

/// One whole attempt: the challenge, the option answered (`None` when nothing
/// presented covered any option and everything provable was sent), and the answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub challenge: pb::Challenge,
    pub chosen: Option<FactorSet>,
    pub result: pb::LogonResult,
}

impl Attempt {
    pub fn allowed(&self) -> bool {
        self.result.decision() == pb::Decision::Allow
    }
}

/// A connection to one tier's gateway as one device.
#[derive(Debug, Clone)]
pub struct Agent {
    client: LogonClient<Channel>,
}

impl Agent {
    /// Connect and call timeout of [`Agent::connect`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects to the gateway at `url` presenting the device certificate of `tls`;
    /// the gateway's certificate is checked for `server_name` (default: the URL's
    /// host).
    pub async fn connect(
        url: &str,
        tls: &ClientTls,
        server_name: Option<&str>,
    ) -> Result<Agent, AgentError> {
        Agent::connect_with_timeout(url, tls, server_name, Agent::DEFAULT_TIMEOUT).await
    }

    pub async fn connect_with_timeout(
        url: &str,
        tls: &ClientTls,
        server_name: Option<&str>,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let channel = tls::connect(url, tls, server_name, timeout).await?;
        Ok(Agent::from_channel(channel))
    }

    /// An agent over an existing channel (tests, the simulator sharing channels).
    pub fn from_channel(channel: Channel) -> Agent {
        Agent {
            client: LogonClient::new(channel),
        }
    }

    /// The underlying client, for calls this type does not wrap.
    pub fn client(&mut self) -> &mut LogonClient<Channel> {
        &mut self.client
    }

    /// `Logon.Begin`: the challenge for this user and action on this device.
    pub async fn begin(&mut self, args: BeginArgs) -> Result<pb::Challenge, AgentError> {
        let request = pb::BeginRequest {
            device: String::new(),
            user: args.user,
            action: args.action,
            via: args.via,
            upstream: args.upstream,
            request_id: String::new(),
        };
        Ok(self.client.begin(request).await?.into_inner())
    }

    /// `Logon.Complete`: answers a `logon` or `elevate` challenge.
    pub async fn complete(
        &mut self,
        challenge_id: &str,
        proofs: Vec<pb::Proof>,
    ) -> Result<pb::LogonResult, AgentError> {
        let request = complete_request(challenge_id, proofs);
        Ok(self.client.complete(request).await?.into_inner())
    }

    /// `Logon.Unlock`: answers an `unlock` challenge.
    pub async fn unlock_complete(
        &mut self,
        challenge_id: &str,
        proofs: Vec<pb::Proof>,
    ) -> Result<pb::LogonResult, AgentError> {
        let request = complete_request(challenge_id, proofs);
        Ok(self.client.unlock(request).await?.into_inner())
    }

    /// `Logon.Lock`: locks the device's session (screen lock).
    pub async fn lock(&mut self, session_id: &str) -> Result<pb::SessionState, AgentError> {
        let request = pb::SessionRequest {
            session_id: session_id.to_string(),
            request_id: String::new(),
        };
        Ok(self.client.lock(request).await?.into_inner())
    }

    /// `Logon.Logoff`: ends the device's session.
    pub async fn logoff(&mut self, session_id: &str) -> Result<pb::SessionState, AgentError> {
        let request = pb::SessionRequest {
            session_id: session_id.to_string(),
            request_id: String::new(),
        };
        Ok(self.client.logoff(request).await?.into_inner())
    }

    /// Begin, answer the first option `presented` covers (everything provable when
    /// none is covered, so that the gateway gives its own denial), and complete. An
    /// `unlock` challenge is answered with `Logon.Unlock`, anything else with
    /// `Logon.Complete`.
    pub async fn authenticate(
        &mut self,
        args: BeginArgs,
        presented: &Presented,
    ) -> Result<Attempt, AgentError> {
        let requested = args.action.clone();
        let challenge = self.begin(args).await?;
        let (chosen, proofs) = select_proofs(presented, &challenge)?;
        let action = if challenge.action.is_empty() {
            requested.as_str()
        } else {
            challenge.action.as_str()
        };
        let result = if action == "unlock" || action == "switch_operator" {
            self.unlock_complete(&challenge.challenge_id, proofs)
                .await?
        } else {
            self.complete(&challenge.challenge_id, proofs).await?
        };
        Ok(Attempt {
            challenge,
            chosen,
            result,
        })
    }

    /// A whole logon of `user` (`via`: console, rdp, lgwan_telework; empty is console).
    pub async fn logon(
        &mut self,
        user: &str,
        presented: &Presented,
        via: &str,
    ) -> Result<pb::LogonResult, AgentError> {
        let args = BeginArgs::new(user, "logon").via(via);
        Ok(self.authenticate(args, presented).await?.result)
    }

    /// A whole unlock of this device's locked session by `user`.
    pub async fn unlock(
        &mut self,
        user: &str,
        presented: &Presented,
        via: &str,
    ) -> Result<pb::LogonResult, AgentError> {
        let args = BeginArgs::new(user, "unlock").via(via);
        Ok(self.authenticate(args, presented).await?.result)
    }
}

fn complete_request(challenge_id: &str, proofs: Vec<pb::Proof>) -> pb::CompleteRequest {
    pb::CompleteRequest {
        challenge_id: challenge_id.to_string(),
        proofs,
        request_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_becomes_code_and_message() {
        let err = AgentError::from(tonic::Status::permission_denied(
            "device d1 belongs to tier mynumber",
        ));
        assert!(matches!(
            err,
            AgentError::Rpc {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "gateway: device d1 belongs to tier mynumber (PermissionDenied)"
        );
        let err = AgentError::from(tonic::Status::unavailable(""));
        assert!(err.to_string().contains("Unavailable"), "{err}");
    }

    #[test]
    fn begin_args_builder() {
        let a = BeginArgs::new("u1", "unlock").via("rdp");
        assert_eq!(
            a,
            BeginArgs {
                user: "u1".into(),
                action: "unlock".into(),
                via: "rdp".into(),
                upstream: vec![]
            }
        );
    }
}
