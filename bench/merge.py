"""Replaces sections of a full run's results with those of a later run of fewer sections:
    bench/.venv/bin/python bench/merge.py FULL.json LATER.json OUT.json
The report then names, under its first line, which sections come from the later run and when
it ran, so one table never mixes two runs."""
import json
import sys

SKIP = {"machine", "versions", "command", "started", "finished", "remeasured"}


def main():
    full, later = (json.load(open(p)) for p in sys.argv[1:3])
    sections = [k for k in later if k not in SKIP]
    for k in sections:
        full[k] = later[k]
    full.setdefault("remeasured", []).append({
        "sections": sections, "command": later.get("command"), "started": later.get("started"),
        "finished": later.get("finished"), "load": later.get("machine", {}).get("load"),
        "commit": later.get("versions", {}).get("beatd"), "file": sys.argv[2]})
    json.dump(full, open(sys.argv[3], "w"), indent=1)


if __name__ == "__main__":
    main()
