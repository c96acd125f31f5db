//! `sekisho.v1.Logon`: what endpoints call.

use std::sync::Arc;

use sekisho_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{peer_name, request_id, status};
use crate::logon::Gateway;
use crate::session::SessionState;

pub struct LogonService {
    gateway: Arc<Gateway>,
    admin_names: Arc<[String]>,
}

impl LogonService {
    pub fn new(gateway: Arc<Gateway>, admin_names: Arc<[String]>) -> Self {
        LogonService {
            gateway,
            admin_names,
        }
    }

    /// The device id is the client certificate's common name. Administrator
    /// certificates are not devices.
    fn device<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match peer_name(request) {
            Some(n) if self.admin_names.contains(&n) => Err(Status::permission_denied(
                "an administrator certificate is not a device certificate",
            )),
            Some(n) => Ok(n),
            None => Err(Status::unauthenticated(
                "endpoints must present a device certificate (mutual TLS)",
            )),
        }
    }
}

#[tonic::async_trait]
impl pb::logon_server::Logon for LogonService {
    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let device = self.device(&request)?;
        let r = request.into_inner();
        let id = request_id(&r.request_id);
        let span = tracing::info_span!("begin", request_id = %id, device = %device, user = %r.user, action = %r.action);
        let challenge = self
            .gateway
            .begin(&device, r, &id)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(challenge))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::LogonResult>, Status> {
        self.finish(request, false).await
    }

    async fn unlock(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::LogonResult>, Status> {
        self.finish(request, true).await
    }

    async fn lock(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        self.session(request, SessionState::Locked).await
    }

    async fn logoff(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        self.session(request, SessionState::Ended).await
    }
}

impl LogonService {
    async fn finish(
        &self,
        request: Request<pb::CompleteRequest>,
        unlock: bool,
    ) -> Result<Response<pb::LogonResult>, Status> {
        let device = self.device(&request)?;
        let r = request.into_inner();
        let id = request_id(&r.request_id);
        let span = tracing::info_span!("complete", request_id = %id, device = %device, unlock);
        let result = self
            .gateway
            .complete(&device, r, unlock, &id)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(result))
    }

    async fn session(
        &self,
        request: Request<pb::SessionRequest>,
        state: SessionState,
    ) -> Result<Response<pb::SessionState>, Status> {
        let device = self.device(&request)?;
        let r = request.into_inner();
        let id = request_id(&r.request_id);
        let span =
            tracing::info_span!("session", request_id = %id, device = %device, to = state.name());
        let s = self
            .gateway
            .set_session(&device, &r.session_id, state, &id)
            .instrument(span.clone())
            .await
            .map_err(status)?;
        span.in_scope(
            || tracing::info!(session = %s.session_id, user = %s.user, "session {}", s.state),
        );
        Ok(Response::new(s))
    }
}
