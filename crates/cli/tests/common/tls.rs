//! An HTTPS server on loopback whose certificate a private CA signed (what an operator's CA
//! bundle is for): the CA and the server's key made with `openssl`, the server Python's own
//! `http.server` (from the test venv). Serves `/ds/file.txt` (`tls data\n`); anything else is a
//! 404. Killed when the returned handle is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// A child process killed when dropped.
pub struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running server: its port, the CA's certificate (`SSL_CERT_FILE`), and its process.
pub struct TlsServer {
    pub port: u16,
    pub ca: PathBuf,
    _child: Child,
}

/// `openssl` with `args`, in `dir`; panics unless it succeeds.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"tls data\n" if self.path == "/ds/file.txt" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// Make a CA and a certificate for 127.0.0.1 in `dir`, and start the server.
pub fn https_server(dir: &Path) -> TlsServer {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=caas test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let mut child = std::process::Command::new(super::s3::aws_bin().replace("/aws", "/python"))
        .arg("-c")
        .arg(SERVER)
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Child(child);
    TlsServer {
        port: line.trim().parse().unwrap(),
        ca: dir.join("ca.pem"),
        _child: child,
    }
}
