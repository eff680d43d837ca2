//! The deployment files are checked, not only written: `deploy/kubernetes.yaml` parses and wires
//! the probes, ports, mounts and configuration consistently; the configs it and the Dockerfile
//! ship load as hooksign configs; and every metric the Grafana dashboard queries exists in a
//! live `/metrics` after real traffic.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::*;

use hooksign::config::Config;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of `deploy/kubernetes.yaml`.
fn kubernetes_documents() -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo("deploy/kubernetes.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).expect("every document parses as YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|doc| doc["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes.yaml"))
}

fn str_of(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// Loads `text` as a hooksign config file in a temporary directory.
fn load_config(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|err| panic!("config does not load: {err:#}\n{text}"))
}

#[test]
fn kubernetes_example_is_valid_and_consistent() {
    let docs = kubernetes_documents();
    assert!(docs.len() >= 3, "expected ConfigMap, Secret and Deployment");
    for doc in &docs {
        assert!(doc["apiVersion"].is_string(), "{doc:?}");
        assert!(doc["kind"].is_string(), "{doc:?}");
        assert!(doc["metadata"]["name"].is_string(), "{doc:?}");
    }

    let config_map = find(&docs, "ConfigMap");
    let config = load_config(str_of(&config_map["data"]["config.toml"]));
    assert!(
        config.proxy.listen.tcp().unwrap().ip().is_loopback(),
        "the sidecar's proxy port must stay on loopback"
    );
    let admin_port = config.admin.listen.tcp().unwrap().port();

    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        str_of(&annotations["prometheus.io/port"]),
        admin_port.to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let grace_seconds = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        (config.server.drain_delay + config.server.shutdown_grace).as_secs() < grace_seconds,
        "drain_delay + shutdown_grace must end before the kubelet's SIGKILL"
    );

    let sidecar = spec["initContainers"]
        .as_sequence()
        .into_iter()
        .chain(spec["containers"].as_sequence())
        .flatten()
        .find(|c| c["name"] == "hooksign")
        .expect("a hooksign container");
    let security = &sidecar["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);

    let port = sidecar["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("a port named admin");
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(admin_port)));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "admin" || get["port"].as_u64() == Some(u64::from(admin_port)),
            "{probe} must hit the admin port"
        );
    }

    // The config file the container is told to read comes from the ConfigMap mount, and the
    // store path lies in the read-only Secret mount.
    let args: Vec<&str> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = sidecar["volumeMounts"].as_sequence().unwrap();
    let volumes = spec["volumes"].as_sequence().unwrap();
    let mount_of = |file: &Path| {
        mounts
            .iter()
            .find(|m| file.starts_with(str_of(&m["mountPath"])))
            .unwrap_or_else(|| panic!("{} is on no volume mount", file.display()))
    };
    let volume_of = |mount: &Yaml| {
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for mount {mount:?}"))
            .clone()
    };
    let config_volume = volume_of(mount_of(Path::new(config_arg)));
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let store_mount = mount_of(&config.store.path);
    assert_eq!(store_mount["readOnly"], true);
    let store_volume = volume_of(store_mount);
    let secret = find(&docs, "Secret");
    assert_eq!(
        store_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let store_file = config.store.path.file_name().unwrap().to_str().unwrap();
    assert!(
        secret["stringData"][store_file].is_string(),
        "the Secret has no key {store_file}"
    );
}

#[test]
fn container_config_loads_and_keeps_the_proxy_port_off_the_network() {
    let text = std::fs::read_to_string(repo("deploy/container.toml")).unwrap();
    let config = load_config(&text);
    let socket = match &config.proxy.listen {
        hooksign::config::Listen::Unix { path, mode } => {
            assert_eq!(*mode, 0o660);
            path.clone()
        }
        other => panic!("the container's proxy port must be a unix socket, not {other:?}"),
    };
    assert_eq!(config.admin.listen.tcp().unwrap().port(), 9090);
    assert!(config.store.path.is_absolute());
    // Docker's default stop timeout is 10 s.
    assert!((config.server.drain_delay + config.server.shutdown_grace).as_secs() < 10);

    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY deploy/container.toml /etc/hooksign/config.toml"));
    assert!(
        dockerfile.contains("EXPOSE 9090\n"),
        "only the admin port is exposed"
    );
    assert!(!dockerfile.contains("EXPOSE 8080"));
    assert!(
        !dockerfile.contains("webhooks.toml:/var/lib"),
        "a bind-mounted store file"
    );
    assert!(dockerfile.contains("\"healthcheck\", \"--config\", \"/etc/hooksign/config.toml\""));
    assert!(dockerfile.contains(&format!(
        "VOLUME [\"/etc/hooksign\", \"{}\", \"{}\"]",
        config.store.path.parent().unwrap().display(),
        socket.parent().unwrap().display()
    )));
}

/// The metric names in every PromQL expression of the dashboard.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("hooksign_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Json::String(expr)) => out.push(expr.clone()),
                    ("query", Json::Object(q)) => {
                        if let Some(Json::String(expr)) = q.get("query") {
                            out.push(expr.clone());
                        }
                    }
                    _ => collect_exprs(value, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let names = dashboard_metrics();
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;
    let reply = server
        .deliver(
            &[
                ("x-webhook-id", endpoint.uuid.as_str()),
                ("x-webhook-event", "invoice.paid"),
            ],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(server.admin_get("/healthz").await.status, StatusCode::OK);
    let metrics = server.admin_get("/metrics").await.text();
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for name in &names {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
    // The dashboard covers every family hooksign exports.
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = family.split(' ').next().unwrap();
        assert!(
            names.iter().any(|n| n.starts_with(family)),
            "the dashboard never shows {family}"
        );
    }
}
