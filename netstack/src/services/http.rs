//! A static-file HTTP/1.1 server: `GET` and `HEAD` of files held in memory, one request
//! per connection (`Connection: close`), bodies streamed as the window allows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;

use super::{Service, relisten};
use crate::{Error, Stack};

/// Longest request head accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 8192;

#[derive(Debug)]
enum Conn {
    /// Reading the request head.
    Request(Vec<u8>),
    /// Sending the response: head, then body from `at`.
    Respond {
        head: Vec<u8>,
        head_sent: usize,
        body: Option<Arc<[u8]>>,
        at: usize,
    },
    /// Response sent and closed; waiting for the socket to finish.
    Done,
}

/// The files a server has: URL path to contents.
pub type Files = HashMap<String, Arc<[u8]>>;

/// Reads every regular file directly in `dir` into memory, served as `/NAME`.
pub fn load_dir(dir: &Path) -> Result<Files, Error> {
    let err = |source| Error::File {
        path: dir.to_owned(),
        source,
    };
    let mut files = Files::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if !entry.file_type().map_err(err)?.is_file() {
            continue;
        }
        let path = entry.path();
        let data = std::fs::read(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        files.insert(
            format!("/{}", entry.file_name().to_string_lossy()),
            data.into(),
        );
    }
    Ok(files)
}

/// The HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    port: u16,
    files: Files,
    conns: Vec<(SocketHandle, Conn)>,
    /// Responses fully queued, by status: (200, 400, 404, 405).
    pub served: [u64; 4],
}

impl HttpServer {
    /// Listens on `port` of `stack` with `connections` sockets, serving `files`.
    pub fn new<D: Device>(
        stack: &mut Stack<D>,
        port: u16,
        connections: usize,
        files: Files,
    ) -> Result<HttpServer, Error> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let h = stack.add_tcp_socket();
            relisten(stack.sockets().get_mut::<tcp::Socket>(h), port)?;
            conns.push((h, Conn::Request(Vec::new())));
        }
        Ok(HttpServer {
            port,
            files,
            conns,
            served: [0; 4],
        })
    }

    /// The response to a request head (everything up to the blank line).
    fn respond(&mut self, req: &[u8]) -> Conn {
        let (status, body, head_only) = match parse_request(req) {
            Err(status) => (status, None, false),
            Ok((method, path)) => match (method, self.files.get(path)) {
                ("GET" | "HEAD", Some(f)) => (200, Some(f.clone()), method == "HEAD"),
                ("GET" | "HEAD", None) => (404, None, method == "HEAD"),
                _ => (405, None, false),
            },
        };
        let (reason, i) = match status {
            200 => ("OK", 0),
            400 => ("Bad Request", 1),
            404 => ("Not Found", 2),
            _ => ("Method Not Allowed", 3),
        };
        self.served[i] += 1;
        let len = body.as_ref().map_or(0, |b| b.len());
        let ctype = if status == 200 {
            "application/octet-stream"
        } else {
            "text/plain"
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nContent-Type: {ctype}\r\nConnection: close\r\nServer: rbufnic\r\n\r\n"
        );
        Conn::Respond {
            head: head.into_bytes(),
            head_sent: 0,
            body: if head_only { None } else { body },
            at: 0,
        }
    }
}

/// Parses `METHOD SP PATH SP HTTP/1.x` from a request head; the status on failure.
fn parse_request(req: &[u8]) -> Result<(&str, &str), u16> {
    let line_end = req.windows(2).position(|w| w == b"\r\n").ok_or(400u16)?;
    let line = std::str::from_utf8(&req[..line_end]).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(400);
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok((method, path))
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl Service for HttpServer {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let mut did = false;
        for i in 0..self.conns.len() {
            let h = self.conns[i].0;
            let s = sockets.get_mut::<tcp::Socket>(h);
            if relisten(s, self.port)? {
                self.conns[i].1 = Conn::Request(Vec::new());
                did = true;
                continue;
            }
            let mut next = None;
            match &mut self.conns[i].1 {
                Conn::Request(buf) => {
                    while s.can_recv() && head_end(buf).is_none() && buf.len() < MAX_REQUEST_BYTES {
                        let room = MAX_REQUEST_BYTES - buf.len();
                        let got = s
                            .recv(|d| {
                                let n = d.len().min(room);
                                buf.extend_from_slice(&d[..n]);
                                (n, n)
                            })
                            .unwrap_or(0);
                        did |= got > 0;
                    }
                    if let Some(end) = head_end(buf) {
                        let req = std::mem::take(buf);
                        next = Some(self.respond(&req[..end]));
                    } else if buf.len() >= MAX_REQUEST_BYTES {
                        next = Some(self.respond(b"too long"));
                    } else if s.state() == tcp::State::CloseWait {
                        // Closed before a whole request: nothing to answer.
                        s.close();
                        next = Some(Conn::Done);
                    }
                }
                Conn::Respond {
                    head,
                    head_sent,
                    body,
                    at,
                } => {
                    while s.can_send() {
                        let n = if *head_sent < head.len() {
                            let n = s.send_slice(&head[*head_sent..]).unwrap_or(0);
                            *head_sent += n;
                            n
                        } else if let Some(b) = body.as_ref().filter(|b| *at < b.len()) {
                            let n = s.send_slice(&b[*at..]).unwrap_or(0);
                            *at += n;
                            n
                        } else {
                            0
                        };
                        if n == 0 {
                            break;
                        }
                        did = true;
                    }
                    let body_done = body.as_ref().is_none_or(|b| *at == b.len());
                    if *head_sent == head.len() && body_done {
                        s.close();
                        next = Some(Conn::Done);
                    }
                }
                Conn::Done => {}
            }
            if let Some(n) = next {
                self.conns[i].1 = n;
                did = true;
            }
        }
        Ok(did)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request(b"GET /f?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(("GET", "/f"))
        );
        assert_eq!(parse_request(b"GET /f HTTP/2\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"GET f HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"GET /f  HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"\xff /f HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    }
}
