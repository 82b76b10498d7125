//! An SMTP server on 127.0.0.1 for tests, here and in other crates (with
//! the `testing` feature). It accepts every message, keeps it in memory and
//! speaks enough ESMTP for lettre: EHLO, STARTTLS when given a certificate,
//! AUTH PLAIN and LOGIN with any credentials, MAIL, RCPT, DATA with dot
//! unstuffing, RSET, NOOP and QUIT.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Largest message the server accepts, in bytes.
const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// A message as the server received it.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The address of `MAIL FROM`.
    pub from: String,
    /// The addresses of every accepted `RCPT TO`.
    pub to: Vec<String>,
    /// The message after dot unstuffing, with CRLF line ends and without the
    /// final `.` line.
    pub data: String,
    /// Whether the message came over TLS.
    pub tls: bool,
    /// The credentials of the session, if the client authenticated.
    pub auth: Option<ReceivedAuth>,
}

/// Credentials a client sent with `AUTH`.
#[derive(Clone, Debug)]
pub struct ReceivedAuth {
    /// `PLAIN` or `LOGIN`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
    /// Whether the connection was encrypted when the credentials arrived.
    pub tls: bool,
}

/// The running server. Dropping it stops the server and its connections.
pub struct TestSmtpServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

struct State {
    mails: watch::Sender<Vec<ReceivedMail>>,
    /// Every byte clients sent before TLS started, or on connections without TLS.
    cleartext: Mutex<Vec<u8>>,
    /// The reply to `RCPT TO`, or `None` to accept every recipient.
    rcpt_reply: Mutex<Option<String>>,
}

impl TestSmtpServer {
    /// Starts the server on 127.0.0.1 at a free port. With `tls`, a
    /// certificate chain and its private key in PEM, the server offers
    /// STARTTLS. Without it, the server speaks plain SMTP only.
    pub async fn start(tls: Option<(String, String)>) -> anyhow::Result<TestSmtpServer> {
        let acceptor = match tls {
            Some((cert_pem, key_pem)) => Some(tls_acceptor(&cert_pem, &key_pem)?),
            None => None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the test SMTP server failed")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            mails: watch::Sender::new(Vec::new()),
            cleartext: Mutex::new(Vec::new()),
            rcpt_reply: Mutex::new(None),
        });

        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state), acceptor));
        Ok(TestSmtpServer { addr, state, accept_task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the messages received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.state.mails.borrow().clone()
    }

    /// Waits until at least `count` messages have arrived and returns them
    /// all, or fails after `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedMail>> {
        let mut receiver = self.state.mails.subscribe();
        match tokio::time::timeout(timeout, receiver.wait_for(|mails| mails.len() >= count)).await {
            Ok(Ok(mails)) => Ok(mails.clone()),
            Ok(Err(_)) => anyhow::bail!("the test SMTP server stopped"),
            Err(_) => anyhow::bail!(
                "timed out after {timeout:?} waiting for {count} messages; the test SMTP server received {}",
                self.state.mails.borrow().len()
            ),
        }
    }

    /// Makes the server reply to every later `RCPT TO` with `reply`, such as
    /// `550 5.1.1 mailbox unavailable`.
    pub fn reject_recipients(&self, reply: &str) {
        *lock(&self.state.rcpt_reply) = Some(reply.to_string());
    }

    /// Returns everything clients sent in the clear: before STARTTLS, or
    /// all of a session without TLS.
    pub fn cleartext(&self) -> String {
        String::from_utf8_lossy(&lock(&self.state.cleartext)).into_owned()
    }
}

impl Drop for TestSmtpServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the test SMTP server's certificate is not valid PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the test SMTP server's private key is not valid PEM: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the test SMTP server's certificate does not match its key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, acceptor: Option<TlsAcceptor>) {
    // Dropping the set when the task is aborted also ends every connection.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "the test SMTP server failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            if let Err(error) = serve_connection(stream, &state, acceptor).await {
                tracing::debug!(%error, "a test SMTP session ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Connection = BufReader<Box<dyn Stream>>;

/// State of the current SMTP session.
#[derive(Default)]
struct Session {
    tls: bool,
    from: Option<String>,
    to: Vec<String>,
    auth: Option<ReceivedAuth>,
}

async fn serve_connection(stream: TcpStream, state: &State, acceptor: Option<TlsAcceptor>) -> anyhow::Result<()> {
    let mut connection: Connection = BufReader::new(Box::new(stream));
    let mut session = Session::default();
    reply(&mut connection, "220 learntrac-test ESMTP ready").await?;

    loop {
        let Some(line) = read_line(&mut connection, state, session.tls).await? else {
            return Ok(());
        };
        let (verb, argument) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => {
                let mut lines = vec!["250-learntrac-test"];
                if acceptor.is_some() && !session.tls {
                    lines.push("250-STARTTLS");
                }
                lines.push("250-AUTH PLAIN LOGIN");
                lines.push("250 8BITMIME");
                reply(&mut connection, &lines.join("\r\n")).await?;
            }
            "STARTTLS" => {
                let Some(acceptor) = acceptor.as_ref().filter(|_| !session.tls) else {
                    reply(&mut connection, "502 5.5.1 STARTTLS is not available").await?;
                    continue;
                };
                reply(&mut connection, "220 2.0.0 ready to start TLS").await?;
                // Commands sent after STARTTLS but before the handshake could
                // have been injected by an attacker, so the session ends.
                if !connection.buffer().is_empty() {
                    anyhow::bail!("the client sent data after STARTTLS before the TLS handshake");
                }
                let tls_stream = acceptor.accept(connection.into_inner()).await?;
                connection = BufReader::new(Box::new(tls_stream));
                // RFC 3207: the client starts again with EHLO after the handshake.
                session = Session { tls: true, ..Session::default() };
            }
            "AUTH" => {
                let auth = authenticate(&mut connection, state, session.tls, argument).await?;
                match auth {
                    Some(auth) => {
                        session.auth = Some(auth);
                        reply(&mut connection, "235 2.7.0 authentication succeeded").await?;
                    }
                    None => reply(&mut connection, "504 5.5.4 unknown mechanism or bad encoding").await?,
                }
            }
            "MAIL" => {
                session.from = angle_address(argument);
                session.to.clear();
                reply(&mut connection, "250 2.1.0 sender ok").await?;
            }
            "RCPT" => {
                let rejection = lock(&state.rcpt_reply).clone();
                if let Some(rejection) = rejection {
                    reply(&mut connection, &rejection).await?;
                } else if let Some(address) = angle_address(argument) {
                    session.to.push(address);
                    reply(&mut connection, "250 2.1.5 recipient ok").await?;
                } else {
                    reply(&mut connection, "501 5.1.3 bad recipient address syntax").await?;
                }
            }
            "DATA" => {
                if session.from.is_none() || session.to.is_empty() {
                    reply(&mut connection, "503 5.5.1 MAIL and RCPT first").await?;
                    continue;
                }
                reply(&mut connection, "354 end data with <CR><LF>.<CR><LF>").await?;
                let Some(data) = read_data(&mut connection, state, session.tls).await? else {
                    reply(&mut connection, "552 5.3.4 message too big").await?;
                    continue;
                };
                let mail = ReceivedMail {
                    from: session.from.take().unwrap_or_default(),
                    to: std::mem::take(&mut session.to),
                    data,
                    tls: session.tls,
                    auth: session.auth.clone(),
                };
                state.mails.send_modify(|mails| mails.push(mail));
                reply(&mut connection, "250 2.0.0 queued").await?;
            }
            "RSET" => {
                session.from = None;
                session.to.clear();
                reply(&mut connection, "250 2.0.0 ok").await?;
            }
            "NOOP" => reply(&mut connection, "250 2.0.0 ok").await?,
            "QUIT" => {
                reply(&mut connection, "221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => reply(&mut connection, "502 5.5.2 command not recognised").await?,
        }
    }
}

/// Runs the `AUTH` exchange and returns the credentials, or `None` for an
/// unknown mechanism or invalid base64.
async fn authenticate(
    connection: &mut Connection,
    state: &State,
    tls: bool,
    argument: &str,
) -> anyhow::Result<Option<ReceivedAuth>> {
    let (mechanism, initial) = argument.split_once(' ').unwrap_or((argument, ""));
    let mechanism = mechanism.to_ascii_uppercase();
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text.trim()).ok();

    let credentials = match mechanism.as_str() {
        "PLAIN" => {
            let response = if initial.is_empty() {
                reply(connection, "334 ").await?;
                read_line(connection, state, tls).await?.unwrap_or_default()
            } else {
                initial.to_string()
            };
            // authorization id NUL user name NUL password
            decode(&response).and_then(|bytes| {
                let text = String::from_utf8(bytes).ok()?;
                let mut parts = text.splitn(3, '\0').skip(1);
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
        }
        "LOGIN" => {
            let username = if initial.is_empty() {
                reply(connection, "334 VXNlcm5hbWU6").await?;
                read_line(connection, state, tls).await?.unwrap_or_default()
            } else {
                initial.to_string()
            };
            reply(connection, "334 UGFzc3dvcmQ6").await?;
            let password = read_line(connection, state, tls).await?.unwrap_or_default();
            let text = |bytes: Vec<u8>| String::from_utf8(bytes).ok();
            decode(&username).and_then(text).zip(decode(&password).and_then(text))
        }
        _ => None,
    };
    Ok(credentials.map(|(username, password)| ReceivedAuth { mechanism, username, password, tls }))
}

/// Reads one line without its line end, or `None` at the end of the stream.
async fn read_line(connection: &mut Connection, state: &State, tls: bool) -> anyhow::Result<Option<String>> {
    let mut buffer = Vec::new();
    if connection.read_until(b'\n', &mut buffer).await? == 0 {
        return Ok(None);
    }
    if !tls {
        lock(&state.cleartext).extend_from_slice(&buffer);
    }
    let line = String::from_utf8_lossy(&buffer);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads message data up to the `.` line and removes the extra dot of
/// lines that start with one. Returns `None` when the message is larger
/// than `MAX_MESSAGE_BYTES`.
async fn read_data(connection: &mut Connection, state: &State, tls: bool) -> anyhow::Result<Option<String>> {
    let mut data = String::new();
    let mut too_big = false;
    loop {
        let Some(line) = read_line(connection, state, tls).await? else {
            anyhow::bail!("the client closed the connection during DATA");
        };
        if line == "." {
            return Ok(if too_big { None } else { Some(data) });
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE_BYTES {
            too_big = true;
        }
        if !too_big {
            data.push_str(line);
            data.push_str("\r\n");
        }
    }
}

async fn reply(connection: &mut Connection, text: &str) -> anyhow::Result<()> {
    connection.write_all(text.as_bytes()).await?;
    connection.write_all(b"\r\n").await?;
    connection.flush().await?;
    Ok(())
}

/// Extracts the address between `<` and `>`, as in `FROM:<a@b> BODY=8BITMIME`.
fn angle_address(argument: &str) -> Option<String> {
    let start = argument.find('<')? + 1;
    let end = start + argument[start..].find('>')?;
    Some(argument[start..end].to_string())
}
