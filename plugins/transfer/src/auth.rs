//! Registry credentials asked of the client over its auth stream, as
//! containerd's transfer service does (`core/transfer/registry`): for each
//! host that wants them, an `AuthRequest{host, reference,
//! wwwauthenticate}` goes to the client and its `AuthResponse` comes back
//! (`CREDENTIALS`: user and secret; `NONE`: anonymous).

use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType};
use futures::{future::BoxFuture, StreamExt};
use prost::Name;
use tokio::sync::Mutex;

use crate::{
    registry::{Credentials, RegistryError},
    streams::{pack, type_name, unpack, StreamHandle},
};

/// Credentials from a client's auth stream, one request at a time.
pub struct StreamCredentials {
    stream: Mutex<StreamHandle>,
    reference: String,
}

impl StreamCredentials {
    pub fn new(stream: StreamHandle, reference: &str) -> StreamCredentials {
        StreamCredentials { stream: Mutex::new(stream), reference: reference.to_string() }
    }

    async fn ask(&self, host: &str, www_authenticate: &[String]) -> Result<Option<(String, String)>, RegistryError> {
        let failed = |detail: String| RegistryError::Unauthenticated {
            target: self.reference.clone(),
            host: host.to_string(),
            detail: format!("credentials stream: {detail}"),
        };
        let mut stream = self.stream.lock().await;
        let request = AuthRequest {
            host: host.to_string(),
            reference: self.reference.clone(),
            wwwauthenticate: www_authenticate.to_vec(),
        };
        stream.send(pack(&request)).await.map_err(|e| failed(e.to_string()))?;
        let response = loop {
            match stream.incoming.next().await {
                None => return Err(failed("closed by the client".into())),
                Some(Err(s)) => return Err(failed(s.message)),
                Some(Ok(any)) if type_name(&any) == AuthResponse::full_name() => {
                    break unpack::<AuthResponse>(&any).map_err(|e| failed(e.to_string()))?;
                }
                Some(Ok(_)) => {}
            }
        };
        match AuthType::try_from(response.auth_type) {
            Ok(AuthType::Credentials) => Ok(Some((response.username, response.secret))),
            Ok(AuthType::None) => Ok(None),
            _ => Err(RegistryError::Unsupported { what: format!("auth type {} from the client", response.auth_type) }),
        }
    }
}

impl Credentials for StreamCredentials {
    fn credentials(
        &self,
        host: &str,
        www_authenticate: &[String],
    ) -> BoxFuture<'_, Result<Option<(String, String)>, RegistryError>> {
        let (host, www_authenticate) = (host.to_string(), www_authenticate.to_vec());
        Box::pin(async move { self.ask(&host, &www_authenticate).await })
    }
}
