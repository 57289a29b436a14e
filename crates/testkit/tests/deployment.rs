//! Static checks of the deployment files, since no Docker engine runs here: the compose file,
//! the Railway configs and the Dockerfiles must name Dockerfiles that exist, set only environment
//! variables the programs read, and probe health paths the programs serve. The variables a program
//! reads are found in its source, so a renamed variable fails this test; the README must list them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use evp_testkit::workspace_root;

/// Which program a Dockerfile builds, from its name.
fn program_of(dockerfile: &str) -> &'static str {
    ["ingest", "worker", "loadtest"]
        .into_iter()
        .find(|p| dockerfile.ends_with(&format!("{p}.Dockerfile")))
        .unwrap_or_else(|| panic!("unknown Dockerfile {dockerfile}"))
}

/// Variables read through `evp_runtime::config::Env` or clap's `env = "..."` in these crates.
fn variables_read(crates: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for krate in crates {
        for file in rust_files(&workspace_root().join("crates").join(krate).join("src")) {
            // Unit tests read made-up variables: leave them out.
            let source = std::fs::read_to_string(&file).unwrap();
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            // Joined lines, so a call split by rustfmt (`env\n    .get("X")`) is still found.
            let text: String = source.split_whitespace().collect();
            for method in ["get", "string", "required", "parse", "positive", "millis"] {
                collect_after(&text, &format!("env.{method}(\""), &mut found);
                collect_after(&text, &format!("env.{method}::<"), &mut found);
            }
            collect_after(&text, "env=\"", &mut found);
        }
    }
    // Read by tracing's EnvFilter, not through our config.
    found.insert("RUST_LOG".into());
    found
}

fn collect_after(text: &str, marker: &str, into: &mut BTreeSet<String>) {
    for (at, _) in text.match_indices(marker) {
        let rest = &text[at + marker.len()..];
        let rest = rest.find("(\"").filter(|_| marker.ends_with('<')).map_or(rest, |i| &rest[i + 2..]);
        let name: String = rest.chars().take_while(|c| *c != '"').collect();
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        {
            into.insert(name);
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn program_variables(program: &str) -> BTreeSet<String> {
    match program {
        "ingest" => variables_read(&["ingest", "runtime"]),
        "worker" => variables_read(&["worker", "runtime"]),
        _ => variables_read(&["loadtest"]),
    }
}

/// Paths each program serves.
fn served_paths(program: &str) -> BTreeSet<String> {
    match program {
        "ingest" => {
            let mut paths: BTreeSet<String> =
                evp_ingest::router::openapi().paths.paths.keys().cloned().collect();
            paths.extend(["/docs/".to_string(), "/openapi.json".to_string()]);
            paths
        }
        "worker" => evp_worker::health::PATHS.iter().map(|p| p.to_string()).collect(),
        _ => BTreeSet::new(),
    }
}

/// The path of the first `http://host:port/path` URL in `text`.
fn url_path(text: &str) -> Option<String> {
    let rest = &text[text.find("http://")? + "http://".len()..];
    let path: String =
        rest[rest.find('/')?..].chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
    Some(path)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(workspace_root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A YAML mapping with its merge keys (`<<: *anchor`) applied, as Compose reads it.
fn merged(mut yaml: serde_yaml_ng::Value) -> serde_yaml_ng::Mapping {
    yaml.apply_merge().unwrap();
    yaml.as_mapping().unwrap().clone()
}

/// The services of a Compose file.
fn compose_services(relative: &str) -> serde_yaml_ng::Mapping {
    let compose = merged(serde_yaml_ng::from_str(&read(relative)).unwrap());
    compose[&serde_yaml_ng::Value::from("services")].as_mapping().unwrap().clone()
}

#[test]
fn variables_are_found_in_the_source() {
    let ingest = program_variables("ingest");
    for v in
        ["API_KEYS", "PORT", "REDIS_URL", "MONGODB_URI", "STREAM_HIGH_WATER", "MAX_BODY_BYTES", "LOG_FORMAT"]
    {
        assert!(ingest.contains(v), "{v} not found among {ingest:?}");
    }
    let worker = program_variables("worker");
    for v in [
        "CONSUMER_GROUP",
        "CONSUMER_NAME",
        "RAILWAY_REPLICA_ID",
        "HOSTNAME",
        "WORKER_PORT",
        "WORKER_BATCH_SIZE",
        "WORKER_CLAIM_IDLE_MS",
        "EVENTS_STREAM",
    ] {
        assert!(worker.contains(v), "{v} not found among {worker:?}");
    }
    assert!(!worker.contains("API_KEYS"));
    assert!(program_variables("loadtest").contains("EVP_URL"));
}

#[test]
fn compose_names_existing_dockerfiles_read_variables_and_served_health_paths() {
    let services = compose_services("infrastructure/docker-compose.yml");
    let mut built = BTreeSet::new();
    for (name, service) in &services {
        let name = name.as_str().unwrap();
        let Some(build) = service.get("build") else { continue };
        let context = workspace_root().join("infrastructure").join(build["context"].as_str().unwrap());
        let dockerfile = build["dockerfile"].as_str().unwrap();
        assert!(context.join(dockerfile).is_file(), "{name}: {dockerfile} does not exist");
        let program = program_of(dockerfile);
        built.insert(program);

        let known = program_variables(program);
        for key in merged(service["environment"].clone()).keys() {
            let key = key.as_str().unwrap();
            assert!(known.contains(key), "{name} sets {key}, which {program} does not read");
        }
        if let Some(test) = service.get("healthcheck").and_then(|h| h.get("test")) {
            let test: Vec<&str> = test.as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
            let path = url_path(&test.join(" ")).unwrap_or_else(|| panic!("{name}: health check has no URL"));
            assert!(
                served_paths(program).contains(&path),
                "{name} probes {path}, which {program} does not serve"
            );
        }
    }
    assert_eq!(built, BTreeSet::from(["ingest", "worker", "loadtest"]));

    let worker = &services[&serde_yaml_ng::Value::from("worker")];
    assert!(worker["deploy"]["replicas"].as_str().is_some_and(|r| r.contains(":-3")), "3 workers by default");
    for dependency in ["redis", "mongo"] {
        assert_eq!(worker["depends_on"][dependency]["condition"], "service_healthy");
    }
    let redis = services[&serde_yaml_ng::Value::from("redis")]["command"].as_sequence().unwrap();
    let redis: Vec<&str> = redis.iter().filter_map(|v| v.as_str()).collect();
    for pair in [["--appendonly", "yes"], ["--appendfsync", "everysec"], ["--maxmemory-policy", "noeviction"]]
    {
        assert!(redis.windows(2).any(|w| w == pair), "redis must run with {pair:?}");
    }
    assert_eq!(services[&serde_yaml_ng::Value::from("mongo")]["image"], "mongo:7");
}

#[test]
fn the_cluster_override_sets_only_variables_the_programs_read() {
    let services = compose_services("infrastructure/docker-compose.cluster.yml");
    for program in ["ingest", "worker"] {
        let env = merged(services[&serde_yaml_ng::Value::from(program)]["environment"].clone());
        for key in env.keys() {
            let key = key.as_str().unwrap();
            assert!(program_variables(program).contains(key), "{program} sets {key}, which it does not read");
        }
        assert_eq!(env[&serde_yaml_ng::Value::from("REDIS_CLUSTER")], "true");
        let seeds = env[&serde_yaml_ng::Value::from("REDIS_URL")].as_str().unwrap();
        for seed in seeds.split(',') {
            let host = seed.trim_start_matches("redis://").split(':').next().unwrap();
            assert!(services.contains_key(host), "{program}: seed {host} is not a service");
        }
    }
    let nodes = services.keys().filter(|k| k.as_str().is_some_and(|k| k.starts_with("redis-node-"))).count();
    assert_eq!(nodes, 6, "3 masters and 3 replicas");
}

#[test]
fn railway_configs_name_existing_dockerfiles_and_served_health_paths() {
    for (file, expected_program) in
        [("railway.json", "ingest"), ("infrastructure/railway.worker.json", "worker")]
    {
        let config: serde_json::Value = serde_json::from_str(&read(file)).unwrap();
        assert_eq!(config["build"]["builder"], "DOCKERFILE", "{file}");
        let dockerfile = config["build"]["dockerfilePath"].as_str().unwrap();
        assert!(workspace_root().join(dockerfile).is_file(), "{file}: {dockerfile} does not exist");
        let program = program_of(dockerfile);
        assert_eq!(program, expected_program, "{file}");
        let path = config["deploy"]["healthcheckPath"].as_str().unwrap();
        assert!(served_paths(program).contains(path), "{file}: {program} does not serve {path}");
        assert!(config["deploy"]["numReplicas"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn dockerfiles_probe_served_paths_and_set_only_variables_the_program_reads() {
    for program in ["ingest", "worker", "loadtest"] {
        let text = read(&format!("infrastructure/{program}.Dockerfile"));
        assert!(text.contains("cargo chef cook"), "{program}: dependency caching");
        assert!(text.contains("USER 10001"), "{program}: runs as non-root");
        assert!(text.contains(&format!("--bin evp-{program}")), "{program}: builds its binary");
        for line in text.lines().filter(|l| l.trim_start().starts_with("ENV ")) {
            let name = line.trim_start()["ENV ".len()..].split('=').next().unwrap();
            assert!(program_variables(program).contains(name), "{program}: ENV {name} is not read");
        }
        if program != "loadtest" {
            let check: Vec<&str> =
                text.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect();
            let path = url_path(&check.join(" ")).unwrap_or_else(|| panic!("{program}: no HEALTHCHECK URL"));
            assert!(served_paths(program).contains(&path), "{program}: HEALTHCHECK probes {path}");
        }
    }
}

#[test]
fn the_readme_lists_every_variable_the_programs_read() {
    let readme = read("README.md");
    let mut all = program_variables("ingest");
    all.extend(program_variables("worker"));
    for variable in all {
        assert!(readme.contains(&format!("`{variable}`")), "README does not document {variable}");
    }
}
