//! The owner's control socket, `DIR/control.sock`: `ccds-node pause`, `resume` and `status`
//! talk to the running daemon through it.
//!
//! # Participants
//! The daemon, and local processes of the user that runs it (or root).
//!
//! # Goals
//! * Only the owner: the socket is created 0600 inside a private (0700) directory and moved
//!   into place, so it is never reachable by others even for a moment, and the daemon also
//!   checks each peer's user ID (`SO_PEERCRED`).
//! * One request per connection, one JSON line each way, both bounded in size and time.
//!
//! # Non-goals
//! Remote control: the CM has `/ccds/control/1`; the owner is on the machine.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

use crate::NodeError;
use crate::agent::Agent;
use crate::datadir::DataDir;
use crate::status::StatusView;

/// Largest request read; real ones are a few dozen bytes.
const MAX_REQUEST: u64 = 4 * 1024;
/// Largest answer read by the CLI; a status is a few kilobytes.
const MAX_ANSWER: u64 = 1 << 20;
/// Time for a whole exchange, either side.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const CONCURRENT: usize = 4;

/// What the owner asks the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum OwnerRequest {
    /// The live status.
    Status,
    /// Leave the collective and refuse fetches until resumed (persisted).
    Pause,
    /// Serve and rejoin.
    Resume,
}

/// The daemon's answer: the status after the request, or why it failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerAnswer {
    Status(Box<StatusView>),
    Error(String),
}

/// Why the CLI could not get an answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// No daemon listens on the socket (none runs, or it predates the socket).
    #[error("no ccds-node is running on {0}")]
    NotRunning(String),
    #[error("the daemon's control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the daemon's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Binds the control socket at `DIR/control.sock`, replacing a stale one (the run lock says
/// no other daemon owns it).
pub fn bind(dir: &DataDir) -> Result<UnixListener, NodeError> {
    let path = dir.control_socket();
    let err = |path: &Path, source| NodeError::ControlSocket {
        path: path.display().to_string(),
        source,
    };
    let private = dir.root().join(format!(".control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| err(&private, e))?;
    let staged = private.join("control.sock");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        std::fs::rename(&staged, &path)?;
        UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(|e| err(&path, e))
}

/// Serves owner requests until the future is dropped.
pub async fn serve(listener: UnixListener, path: PathBuf, agent: Arc<Agent>) {
    // The daemon's user: the socket's owner.
    let owner = std::fs::metadata(&path).map(|m| m.uid()).ok();
    let permits = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid.is_none() || (uid != owner && uid != Some(0)) {
            warn!(
                ?uid,
                ?owner,
                "control socket connection from another user refused"
            );
            continue;
        }
        let agent = agent.clone();
        tokio::spawn(
            async move {
                if let Err(e) = tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &agent)).await
                {
                    debug!(error = %e, "owner request timed out");
                }
                drop(permit);
            }
            .instrument(info_span!("owner", ?uid)),
        );
    }
}

async fn answer(stream: UnixStream, agent: &Agent) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let answer = match read {
        Err(e) => OwnerAnswer::Error(format!("cannot read the request: {e}")),
        Ok(_) => match serde_json::from_str::<OwnerRequest>(&line) {
            Err(e) => OwnerAnswer::Error(format!("not a request: {e}")),
            Ok(request) => {
                debug!(?request, "owner request");
                let done = match request {
                    OwnerRequest::Status => Ok(()),
                    OwnerRequest::Pause => agent.pause(),
                    OwnerRequest::Resume => agent.resume(),
                };
                match done {
                    Ok(()) => OwnerAnswer::Status(Box::new(agent.view())),
                    Err(e) => OwnerAnswer::Error(e.to_string()),
                }
            }
        },
    };
    let mut json = serde_json::to_vec(&answer).expect("answers always serialise");
    json.push(b'\n');
    if let Err(e) = write.write_all(&json).await {
        debug!(error = %e, "owner went away before the answer");
    }
    let _ = write.shutdown().await;
}

/// Sends `request` to the daemon running on `dir`; [`OwnerError::NotRunning`] when none
/// listens.
pub async fn request(dir: &DataDir, request: OwnerRequest) -> Result<StatusView, OwnerError> {
    let path = dir.control_socket();
    let io = |source| OwnerError::Io {
        path: path.display().to_string(),
        source,
    };
    let exchange = async {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(OwnerError::NotRunning(dir.root().display().to_string()));
            }
            Err(e) => return Err(io(e)),
        };
        let mut line = serde_json::to_vec(&request).expect("requests always serialise");
        line.push(b'\n');
        stream.write_all(&line).await.map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        match serde_json::from_slice::<OwnerAnswer>(&answer) {
            Ok(OwnerAnswer::Status(view)) => Ok(*view),
            Ok(OwnerAnswer::Error(reason)) => Err(OwnerError::Refused(reason)),
            Err(e) => Err(OwnerError::BadAnswer(e.to_string())),
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| OwnerError::Timeout(EXCHANGE_TIMEOUT))?
}
