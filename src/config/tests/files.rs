//! Reading from disk: directories, missing paths, non-UTF-8 files, and the files shipped in
//! the repository (`schedules/*.toml`, `beatd.toml`), which must keep loading cleanly.

use super::NOW;
use crate::config::{load_app_config, load_schedules, TaskKind};
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn every_shipped_schedule_file_loads_without_problems() {
    let dir = repo("schedules");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.iter().any(|p| p.ends_with("example.toml"))
            && files.iter().any(|p| p.ends_with("dst.toml"))
    );
    for file in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        match load_schedules(std::slice::from_ref(file), NOW) {
            Ok(s) => {
                assert!(
                    s.warnings.is_empty(),
                    "{}",
                    crate::config::Diagnostics(s.warnings)
                );
                assert!(!s.entries.is_empty(), "{} has no entries", file.display());
            }
            Err(d) => panic!("{d}"),
        }
    }
    // Together too: entry names are unique across the shipped files.
    load_schedules(&[dir], NOW).unwrap();
}

#[test]
fn the_example_fires_within_seconds_of_starting() {
    let s = load_schedules(&[repo("schedules/example.toml")], NOW).unwrap();
    let soon = s
        .entries
        .iter()
        .filter(|e| e.enabled)
        .filter_map(|e| e.schedule.next_after(NOW))
        .filter(|t| *t - NOW <= chrono::TimeDelta::seconds(10))
        .count();
    assert!(soon >= 1, "nothing in example.toml fires within 10 s");
}

#[test]
fn the_shipped_beatd_toml_defines_demo_hello() {
    let config = load_app_config(&repo("beatd.toml")).unwrap_or_else(|d| panic!("{d}"));
    let hello = &config.worker.tasks["demo.hello"];
    assert!(matches!(&hello.kind, TaskKind::Exec { command, .. } if !command.is_empty()));
}

#[test]
fn a_directory_is_read_in_name_order_and_non_toml_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |n: &str| format!("[[entry]]\nname = \"{n}\"\ntask = \"t\"\nevery = \"1m\"\n");
    std::fs::write(dir.path().join("b.toml"), entry("from-b")).unwrap();
    std::fs::write(dir.path().join("a.toml"), entry("from-a")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not toml").unwrap();
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    let s = load_schedules(&[dir.path().to_owned()], NOW).unwrap();
    let names: Vec<_> = s.entries.iter().map(|e| &*e.name).collect();
    assert_eq!(names, ["from-a", "from-b"]);
}

#[test]
fn a_missing_path_is_an_error() {
    let d = load_schedules(&[PathBuf::from("/nonexistent/beatd/schedules")], NOW).unwrap_err();
    assert_eq!(d.0.len(), 1);
    let shown = d.to_string();
    assert!(
        shown.starts_with("/nonexistent/beatd/schedules: error: cannot read: "),
        "{shown}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_an_error_at_the_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[[entry]]\nname = \"caf\xe9\"\n").unwrap();
    let d = &load_schedules(&[path], NOW).unwrap_err().0[0];
    assert_eq!(d.message, "file is not valid UTF-8 (byte 0xe9)");
    assert_eq!((d.line, d.column), (2, 12));
    assert_eq!(d.help.as_deref(), Some("save the file as UTF-8"));
}
