//! The signer's trust boundary as a test. `castellan-signer` holds the keys
//! and must not link the network stack, TLS or the daemon's database;
//! `castellan-proto`, the wire language both sides speak, must not link those
//! nor a crypto backend. This walks the dependency graph `cargo metadata`
//! resolves (normal and build dependencies, transitively; dev-dependencies do
//! not reach the shipped binary) and names the path to anything forbidden.
//!
//! The graph is the workspace-wide resolution, with features unified across
//! members, which is also how a workspace build compiles the signer: a
//! feature the daemon turns on in a shared dependency counts here too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::Command;

use serde_json::Value;

const SIGNER_FORBIDDEN: &[&str] = &["tokio", "hyper", "rustls", "redb"];
const PROTO_FORBIDDEN: &[&str] = &["tokio", "hyper", "rustls", "redb", "ring", "cryptoki"];

/// For every forbidden package reachable from the workspace member `root`
/// through normal or build dependencies, one shortest path of package names
/// from `root` to it.
fn forbidden_paths(
    metadata: &Value,
    root: &str,
    forbidden: &[&str],
) -> Result<Vec<Vec<String>>, String> {
    let packages = metadata["packages"]
        .as_array()
        .ok_or("metadata has no `packages` array")?;
    let mut names: HashMap<&str, &str> = HashMap::new();
    for p in packages {
        let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) else {
            return Err(format!("package without id or name: {p}"));
        };
        names.insert(id, name);
    }
    let members = metadata["workspace_members"]
        .as_array()
        .ok_or("metadata has no `workspace_members` array")?;
    let root_id = members
        .iter()
        .filter_map(Value::as_str)
        .find(|id| names.get(id) == Some(&root))
        .ok_or_else(|| format!("{root} is not a workspace member"))?;
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("metadata has no `resolve.nodes`: was it run with --no-deps?")?;

    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in nodes {
        let id = node["id"].as_str().ok_or("resolve node without id")?;
        let deps = node["deps"]
            .as_array()
            .ok_or_else(|| format!("resolve node {id} without `deps`"))?;
        let mut out = Vec::new();
        for d in deps {
            let pkg = d["pkg"].as_str().ok_or("dependency without `pkg`")?;
            // Missing dep_kinds (very old cargo) would mean "normal".
            let shipped = match d["dep_kinds"].as_array() {
                None => true,
                Some(kinds) => kinds
                    .iter()
                    .any(|k| matches!(k["kind"].as_str(), None | Some("build"))),
            };
            if shipped {
                out.push(pkg);
            }
        }
        edges.insert(id, out);
    }

    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([root_id]);
    let mut seen = HashSet::from([root_id]);
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        let name = names.get(id).copied().unwrap_or(id);
        if id != root_id && forbidden.contains(&name) {
            let mut path = vec![name.to_string()];
            let mut at = id;
            while let Some(p) = parent.get(at) {
                path.push(names.get(p).copied().unwrap_or(p).to_string());
                at = p;
            }
            path.reverse();
            found.push(path);
        }
        for next in edges.get(id).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(next) {
                parent.insert(next, id);
                queue.push_back(next);
            }
        }
    }
    Ok(found)
}

fn workspace_metadata() -> Value {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn assert_boundary(root: &str, forbidden: &[&str], why: &str) {
    let paths = forbidden_paths(&workspace_metadata(), root, forbidden).unwrap();
    assert!(
        paths.is_empty(),
        "{root} must not depend on {forbidden:?} ({why}), but it does:\n{}",
        paths
            .iter()
            .map(|p| format!("  {}", p.join(" -> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn castellan_signer_links_no_network_tls_or_database_crate() {
    assert_boundary(
        "castellan-signer",
        SIGNER_FORBIDDEN,
        "the key holder stays small: no async runtime, HTTP, TLS or the daemon's database",
    );
}

#[test]
fn castellan_proto_links_no_runtime_network_or_crypto_backend_crate() {
    assert_boundary(
        "castellan-proto",
        PROTO_FORBIDDEN,
        "the wire types are shared by both sides and carry no runtime, TLS, database or key backend",
    );
}

#[test]
fn the_walk_of_the_real_graph_sees_what_the_signer_does_link() {
    // A positive control: an empty answer above must come from a real walk.
    let paths = forbidden_paths(
        &workspace_metadata(),
        "castellan-signer",
        &["ring", "sha2", "castellan-proto"],
    )
    .unwrap();
    let mut ends: Vec<&str> = paths
        .iter()
        .filter_map(|p| p.last())
        .map(String::as_str)
        .collect();
    ends.sort();
    assert_eq!(ends, ["castellan-proto", "ring", "sha2"]);
}

// ---------------------------------------------------------------------------
// The walker itself, on small synthetic graphs, so that the tests above can
// actually fail.

fn synthetic(packages: &[&str], members: &[&str], nodes: Value) -> Value {
    serde_json::json!({
        "packages": packages
            .iter()
            .map(|n| serde_json::json!({ "id": format!("{n} 1.0.0"), "name": n }))
            .collect::<Vec<_>>(),
        "workspace_members": members.iter().map(|n| format!("{n} 1.0.0")).collect::<Vec<_>>(),
        "resolve": { "nodes": nodes },
    })
}

fn dep(name: &str, kind: Option<&str>) -> Value {
    serde_json::json!({
        "name": name.replace('-', "_"),
        "pkg": format!("{name} 1.0.0"),
        "dep_kinds": [ { "kind": kind, "target": null } ],
    })
}

fn node(name: &str, deps: Vec<Value>) -> Value {
    serde_json::json!({ "id": format!("{name} 1.0.0"), "deps": deps })
}

#[test]
fn the_walker_names_a_forbidden_crate_reached_through_normal_and_build_dependencies() {
    let meta = synthetic(
        &[
            "castellan-signer",
            "helper",
            "tokio",
            "codegen",
            "redb",
            "hyper",
        ],
        &["castellan-signer"],
        serde_json::json!([
            node(
                "castellan-signer",
                vec![dep("helper", None), dep("codegen", Some("build"))]
            ),
            node("helper", vec![dep("tokio", None)]),
            node("codegen", vec![dep("redb", None)]),
            node("tokio", vec![dep("hyper", None)]),
            node("redb", vec![]),
            node("hyper", vec![]),
        ]),
    );
    let mut paths = forbidden_paths(&meta, "castellan-signer", SIGNER_FORBIDDEN).unwrap();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            vec!["castellan-signer", "codegen", "redb"],
            vec!["castellan-signer", "helper", "tokio"],
            vec!["castellan-signer", "helper", "tokio", "hyper"],
        ]
    );
}

#[test]
fn the_walker_ignores_dev_dependencies_and_unreachable_crates() {
    let meta = synthetic(
        &["castellan-proto", "proptest", "ring", "castellan", "tokio"],
        &["castellan-proto", "castellan"],
        serde_json::json!([
            node("castellan-proto", vec![dep("proptest", Some("dev"))]),
            node("proptest", vec![dep("ring", None)]),
            node(
                "castellan",
                vec![dep("tokio", None), dep("castellan-proto", None)]
            ),
            node("ring", vec![]),
            node("tokio", vec![]),
        ]),
    );
    assert_eq!(
        forbidden_paths(&meta, "castellan-proto", PROTO_FORBIDDEN).unwrap(),
        Vec::<Vec<String>>::new()
    );
    // The daemon may use tokio; the same graph shows it.
    assert_eq!(
        forbidden_paths(&meta, "castellan", &["tokio"]).unwrap(),
        vec![vec!["castellan", "tokio"]]
    );
}

#[test]
fn unusable_metadata_is_an_error_rather_than_a_pass() {
    let no_resolve = serde_json::json!({
        "packages": [ { "id": "castellan-signer 1.0.0", "name": "castellan-signer" } ],
        "workspace_members": [ "castellan-signer 1.0.0" ],
        "resolve": null,
    });
    assert!(forbidden_paths(&no_resolve, "castellan-signer", SIGNER_FORBIDDEN).is_err());
    let meta = synthetic(
        &["other"],
        &["other"],
        serde_json::json!([node("other", vec![])]),
    );
    assert!(forbidden_paths(&meta, "castellan-signer", SIGNER_FORBIDDEN).is_err());
}
