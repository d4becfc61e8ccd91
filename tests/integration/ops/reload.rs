//! Schedule reloads: SIGHUP, a watched file change, and a Kubernetes ConfigMap symlink swap;
//! checked against the messages in Redis.

use super::*;

#[test]
fn sighup_reload_replaces_the_schedule_without_spurious_or_lost_fires() {
    let server = redis();
    let dir = tempdir();
    // The schedule path is a symlink into a directory the watcher does not see, so only the
    // SIGHUP can trigger this reload.
    let real = dir.path().join("real");
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::create_dir_all(&watched).unwrap();
    let target = write(&real, "s.toml", &entries(&["keep", "gone"]));
    let schedule = watched.join("s.toml");
    std::os::unix::fs::symlink(&target, &schedule).unwrap();
    let http = port();
    let mut p = start_beat(&server, dir.path(), &schedule, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "two fires of keep and gone", || {
        (count(&mut conn, "keep") >= 2 && count(&mut conn, "gone") >= 1).then_some(())
    });

    write(&real, "s.toml", &entries(&["keep", "new"]));
    let mark = p.mark();
    p.signal("HUP");
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of new", || {
        (count(&mut conn, "new") >= 2).then_some(())
    });
    let text = wait_metric(&p, http, "beatd_reloads_total", 1.0);
    assert_eq!(metric(&text, "beatd_reload_failures_total"), Some(0.0));

    let all = fires(&mut conn, "celery");
    assert_consecutive(&all, "keep", chrono::Duration::seconds(1));
    assert_consecutive(&all, "new", chrono::Duration::seconds(1));
    let second_new = all
        .iter()
        .filter(|(e, _)| e == "new")
        .nth(1)
        .unwrap()
        .1
        .clone();
    assert!(
        all.iter()
            .all(|(e, t)| e != "gone" || at(t) < at(&second_new)),
        "a removed entry fired after the reload: {all:?}"
    );
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

const INVALID: &str = r#"[[entry]]
name = "keep"
task = "t.ok"
every = "1 fortnight"

[[entry]]
name = "other"
task = "t.ok"
cron = "61 * * * *"
"#;

#[test]
fn watched_file_reload_rejects_invalid_files_and_keeps_the_old_schedule() {
    let server = redis();
    let dir = tempdir();
    let schedules = dir.path().join("schedules");
    std::fs::create_dir_all(&schedules).unwrap();
    let file = write(&schedules, "s.toml", &entries(&["keep"]));
    let http = port();
    let mut p = start_beat(&server, dir.path(), &schedules, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "a fire of keep", || {
        (count(&mut conn, "keep") >= 1).then_some(())
    });

    // Invalid: every error is logged with file:line:column; the old schedule stays.
    let mark = p.mark();
    write(&schedules, "s.toml", INVALID);
    p.wait_line_after(mark, "the rejected reload", |l| {
        l.contains("reload rejected")
    });
    let text = wait_metric(&p, http, "beatd_reload_failures_total", 1.0);
    assert_eq!(metric(&text, "beatd_reloads_total"), Some(0.0));
    let logged = p.lines()[mark..].join("\n");
    for at in [
        ":4:9: error: invalid duration",
        ":9:9: error: invalid `cron`",
    ] {
        let want = format!("{}{at}", file.display());
        assert!(logged.contains(&want), "missing {want:?} in\n{logged}");
    }
    let before = count(&mut conn, "keep");
    wait_proc(&p, "keep firing on after the failure", || {
        (count(&mut conn, "keep") >= before + 2).then_some(())
    });

    // Valid again: applied, with keep's history intact.
    let mark = p.mark();
    write(&schedules, "s.toml", &entries(&["keep", "added"]));
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of added", || {
        (count(&mut conn, "added") >= 2).then_some(())
    });
    wait_metric(&p, http, "beatd_reloads_total", 1.0);
    let all = fires(&mut conn, "celery");
    assert!(
        all.iter().all(|(e, _)| e != "other"),
        "the rejected entry fired"
    );
    assert_consecutive(&all, "keep", chrono::Duration::seconds(1));
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

#[test]
fn kubernetes_configmap_symlink_swap_reloads() {
    let server = redis();
    let dir = tempdir();
    // The layout kubelet writes for a ConfigMap volume:
    //   ..2026_11_23_a/s.toml, ..data -> ..2026_11_23_a, s.toml -> ..data/s.toml
    let cm = dir.path().join("schedules");
    let v1 = cm.join("..2026_11_23_a");
    std::fs::create_dir_all(&v1).unwrap();
    write(&v1, "s.toml", &entries(&["one"]));
    std::os::unix::fs::symlink("..2026_11_23_a", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/s.toml", cm.join("s.toml")).unwrap();
    let http = port();
    let mut p = start_beat(&server, dir.path(), &cm, http);
    let mut conn = redis_conn(&server.url());
    wait_proc(&p, "a fire of one", || {
        (count(&mut conn, "one") >= 1).then_some(())
    });

    // The update, as kubelet does it: new directory, new symlink, atomic rename over ..data.
    let v2 = cm.join("..2026_11_23_b");
    std::fs::create_dir_all(&v2).unwrap();
    write(&v2, "s.toml", &entries(&["two"]));
    std::os::unix::fs::symlink("..2026_11_23_b", cm.join("..data_tmp")).unwrap();
    let mark = p.mark();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules reloaded"));
    wait_proc(&p, "two fires of two", || {
        (count(&mut conn, "two") >= 2).then_some(())
    });
    let all = fires(&mut conn, "celery");
    let second = all
        .iter()
        .filter(|(e, _)| e == "two")
        .nth(1)
        .unwrap()
        .1
        .clone();
    assert!(
        all.iter().all(|(e, t)| e != "one" || at(t) < at(&second)),
        "{all:?}"
    );
    assert_eq!(
        metric(
            &http_get(http, "/metrics").unwrap().1,
            "beatd_reload_failures_total"
        ),
        Some(0.0)
    );
    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}
