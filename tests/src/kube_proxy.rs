//! A tiny fake Kubernetes API server for driving the CRI stream server
//! with the real `kubectl` (its own SPDY client): it answers discovery
//! and `GET /api/v1/namespaces/{ns}/pods/{name}` with a Running pod, and
//! splices each `.../exec`, `.../attach` or `.../portforward` request to
//! the stream server URL the test registered for it (what the CRI's
//! Exec/Attach/PortForward RPC returned), the request line rewritten to
//! that URL's path, as the kubelet's proxy would. Plain HTTP on 127.0.0.1.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Where Debian's kubectl is extracted (scripts/install-deps.sh).
pub const KUBECTL: &str = "/opt/crated-test-tools/kubectl";

type Routes = Arc<Mutex<HashMap<String, VecDeque<String>>>>;

pub struct KubeProxy {
    pub addr: SocketAddr,
    kubeconfig: PathBuf,
    routes: Routes,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeProxy {
    /// Serves pod `namespace/pod` with one container, `container`; writes
    /// a kubeconfig for kubectl into `dir`.
    pub async fn start(dir: &Path, namespace: &str, pod: &str, container: &str) -> KubeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )
        .unwrap();
        let routes: Routes = Arc::default();
        let pod_json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "uid": "uid-1"},
            // stdin: kubectl attach -i only sends stdin to a container
            // whose spec asks for one.
            "spec": {"containers": [{"name": container, "image": "busybox", "stdin": true}]},
            "status": {"phase": "Running"},
        })
        .to_string();
        let pod_path = format!("/api/v1/namespaces/{namespace}/pods/{pod}");
        let r = routes.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (r, pod_json, pod_path) = (r.clone(), pod_json.clone(), pod_path.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &r, &pod_path, &pod_json).await;
                });
            }
        });
        KubeProxy { addr, kubeconfig, routes, task }
    }

    /// The next `kind` request ("exec", "attach", "portforward") goes to
    /// `url` (the stream server's, from the CRI).
    pub fn route_next(&self, kind: &str, url: &str) {
        self.routes.lock().unwrap().entry(kind.to_string()).or_default().push_back(url.to_string());
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// kubectl with this server's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }
}

async fn respond(conn: &mut TcpStream, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

async fn serve(mut conn: TcpStream, routes: &Routes, pod_path: &str, pod_json: &str) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let kind = path.rsplit('/').next().unwrap_or_default();
    if matches!(kind, "exec" | "attach" | "portforward") && path.starts_with(pod_path) {
        let url = routes.lock().unwrap().get_mut(kind).and_then(|q| q.pop_front());
        let Some(url) = url else {
            respond(&mut conn, "404 Not Found", r#"{"kind":"Status","status":"Failure","message":"no route"}"#).await;
            return Ok(());
        };
        let rest = url.strip_prefix("http://").expect("an http URL");
        let (host, url_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut upstream = TcpStream::connect(host).await?;
        let rewritten = head.replacen(&format!("{method} {target} "), &format!("{method} {url_path} "), 1);
        upstream.write_all(rewritten.as_bytes()).await?;
        upstream.write_all(&buf[end..]).await?;
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        return Ok(());
    }
    let body = match path {
        "/api" => r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#.to_string(),
        "/apis" => r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#.to_string(),
        "/api/v1" => serde_json::json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "pods", "singularName": "", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"]},
                {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
                {"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
                {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
            ],
        })
        .to_string(),
        p if p == pod_path => pod_json.to_string(),
        _ => {
            respond(&mut conn, "404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#).await;
            return Ok(());
        }
    };
    respond(&mut conn, "200 OK", &body).await;
    Ok(())
}
