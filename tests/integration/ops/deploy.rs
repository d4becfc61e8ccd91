//! Deploy files: Kubernetes manifests against the schemas offline, the Procfile run as a platform
//! runs it, the Dockerfile.

use super::*;

#[test]
fn kubernetes_manifests_validate_against_the_schemas_offline() {
    let python = std::env::var_os("BEATD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-celery/bin/python"));
    assert!(
        python.exists(),
        "{} missing: run scripts/test.sh, which installs kubernetes-validate in the test venv",
        python.display()
    );
    let out = Command::new(&python)
        .arg(repo().join("scripts/check_k8s.py"))
        .arg(repo().join("deploy/k8s"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/k8s is invalid:\n{text}");
    assert!(text.starts_with("ok: "), "{text}");
}

#[test]
fn procfile_processes_start_and_become_ready() {
    let server = redis();
    let procfile = std::fs::read_to_string(repo().join("Procfile")).unwrap();
    let lines: Vec<(&str, &str)> = procfile
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once(':').expect("name: command"))
        .map(|(n, c)| (n.trim(), c.trim()))
        .collect();
    let names: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["beat", "worker"]);
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut procs = Vec::new();
    for (name, command) in lines {
        let http = port();
        let mut cmd = Command::new("sh");
        clean_env(&mut cmd);
        // A platform (or foreman/honcho on one host) runs the line through a shell in the
        // app's root, with REDIS_URL and a PORT of its own for each process.
        cmd.current_dir(repo())
            .args(["-c", &format!("exec {command}")])
            .env("PATH", &path)
            .env("REDIS_URL", server.url())
            .env("PORT", http.to_string());
        let p = Proc::spawn(cmd);
        procs.push((name, p, http));
    }
    for (name, p, http) in &procs {
        assert_eq!(wait_http(p, *http, "/readyz", 200), "ready\n", "{name}");
    }
    for (name, p, _) in &mut procs {
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{name}: {}", p.output());
    }
}

/// Two free loopback ports `p` and `p + 100`: honcho gives process `i` the port `base + 100 i`.
fn honcho_ports() -> u16 {
    for _ in 0..50 {
        let p = port();
        if p < 65_000 && std::net::TcpListener::bind(("127.0.0.1", p + 100)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of ports 100 apart");
}

#[test]
fn procfile_runs_under_honcho_with_the_binary_on_path_and_both_processes_fire() {
    let python = std::env::var_os("BEATD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-celery/bin/python"));
    let honcho = python.with_file_name("honcho");
    assert!(
        honcho.exists(),
        "{} missing: run scripts/test.sh, which installs honcho in the test venv",
        honcho.display()
    );
    let server = redis();
    let base = honcho_ports();
    // What the README says to do: put the binary on PATH (`cargo install` puts it in
    // ~/.cargo/bin); here the freshly built one.
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let state = tempdir();
    let mut cmd = Command::new(&honcho);
    clean_env(&mut cmd);
    cmd.current_dir(repo())
        .args(["start", "-f", "Procfile", "-p", &base.to_string()])
        .env("PATH", &path)
        .env("REDIS_URL", server.url())
        // The shipped schedules under their own namespace, away from other tests' keys.
        .env("BEATD_NAMESPACE", "honcho")
        .env("STATE_DIRECTORY", state.path());
    let mut p = Proc::spawn(cmd);
    let (beat, worker) = (base, base + 100);
    assert_eq!(wait_http(&p, beat, "/readyz", 200), "ready\n", "beat");
    assert_eq!(wait_http(&p, worker, "/readyz", 200), "ready\n", "worker");
    // The shipped `hello-every-5s` fires and the worker runs `demo.hello`.
    let ran = wait_proc(&p, "demo.hello run by the worker", || {
        let (_, body) = http_get(worker, "/metrics")?;
        metric(
            &body,
            "beatd_worker_tasks_total{task=\"demo.hello\",state=\"success\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    assert!(ran >= 1.0);
    let (_, beat_metrics) = http_get(beat, "/metrics").expect("beat metrics");
    assert!(
        metric(
            &beat_metrics,
            "beatd_messages_sent_total{entry=\"hello-every-5s\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{beat_metrics}"
    );
    p.signal("TERM");
    p.wait_exit();
    let out = p.output();
    assert!(!out.contains("not found"), "{out}");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_tzdata_and_a_build_time_check() {
    // No container engine here: check the facts the image relies on, and run the build's
    // `beatd check` step against what it copies.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(text.contains("tzdata"), "time zone data installed");
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runs as root: {user}"
    );
    // `COPY schedules <dest>` then `RUN beatd check <dest>`.
    let dest = lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY schedules "))
        .expect("schedules copied into the image")
        .trim();
    assert!(
        lines.contains(&format!("RUN beatd check {dest}").as_str()),
        "{text}"
    );
    let out = Command::new(bin())
        .args(["check"])
        .arg(repo().join("schedules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the image's build-time check fails: {out:?}"
    );
}
