#!/usr/bin/env python3
"""Print a Celery app's `beat_schedule` as a beatd schedule file (TOML).

    python scripts/celery-to-toml.py MODULE[:APP] > schedules/celery.toml

Run it with the Python that runs your Celery app (it imports the app, so its settings and
imports must work), from the directory you run `celery -A` from. MODULE alone finds the app
the way `celery -A MODULE` does: attribute `app`, then `celery`, then MODULE.celery for a
package, then the only Celery instance in the module. Like `celery beat`, it imports the
app's task modules and finalizes the app first, so entries added with `add_periodic_task`
in `on_after_configure` / `on_after_finalize` handlers are included.

Output: a `[defaults]` table with the app's time zone, then one `[[entry]]` per
`beat_schedule` item, named by its key. `crontab()` becomes `cron` (day-of-month and
day-of-week ANDed, as Celery does), a number, `timedelta` or `schedule()` becomes `every`,
and `args`, `kwargs` and the options beatd knows (queue as Celery's router resolves it,
routing_key, exchange, priority, expires, headers) are carried over; other options are
listed in a `# not carried over:` comment.

Anything it cannot express exactly (solar, clocked or custom schedule classes, relative
intervals, `None` in arguments, an absolute `expires`, a priority outside 0-9) is refused:
that entry is left out, named in a comment at the top of the output and on stderr with the
reason, and the exit code is 1. The other entries are still printed, so the file is a
starting point, but it is not complete; do not deploy it until every refusal is handled.

Exit codes: 0 every entry converted; 1 some entries refused; 2 the app could not be loaded
or the command line is wrong.

Only the standard library and the user's installed celery are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import sys

PROG = "celery-to-toml"


class Refused(Exception):
    """An entry beatd cannot express exactly; the message says why."""


def die(message: str, code: int = 2) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------
# TOML output

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(s: str) -> str:
    """A TOML basic string (escapes quotes, backslashes and every control character)."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(k: object) -> str:
    if not isinstance(k, str):
        raise Refused(f"key {k!r} is not a string (TOML tables and JSON objects need string keys)")
    return k if BARE_KEY.match(k) else toml_str(k)


def toml_float(f: float) -> str:
    if not math.isfinite(f):
        raise Refused(f"{f!r} cannot be sent as JSON")
    text = repr(f)
    # Python writes `1e-05`; TOML forbids leading zeros in the exponent.
    mantissa, e, exponent = text.partition("e")
    if e:
        sign = exponent[0] if exponent[0] in "+-" else ""
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        text = f"{mantissa}e{sign}{digits}"
    return text


def toml_value(v: object, where: str) -> str:
    """A task argument as a TOML value; refuses what JSON-over-TOML cannot carry."""
    if v is None:
        raise Refused(
            f"{where} contains None, which TOML cannot represent "
            "(dropping it would change the task's arguments)"
        )
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise Refused(f"{where} contains {v}, outside TOML's 64-bit integers")
        return str(v)
    if isinstance(v, float):
        try:
            return toml_float(v)
        except Refused as e:
            raise Refused(f"{where}: {e}") from None
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x, where) for x in v) + "]"
    if isinstance(v, dict):
        try:
            items = [f"{toml_key(k)} = {toml_value(x, where)}" for k, x in v.items()]
        except Refused as e:
            raise Refused(f"{where}: {e}") from None
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise Refused(
        f"{where} contains a {type(v).__name__} ({v!r}); only str, int, float, bool, "
        "lists and dicts of them can be written as TOML"
    )


def humantime(td: dt.timedelta, what: str) -> str:
    """A timedelta as a humantime duration beatd reads ("1h 30m", "1s 500ms")."""
    us = td // dt.timedelta(microseconds=1)
    if us < 0:
        raise Refused(f"{what} is negative ({td})")
    if us == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000),
                       ("s", 1_000_000), ("ms", 1_000), ("us", 1)):
        n, us = divmod(us, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# Time zones

def zone_name(tz: object) -> str | None:
    """The IANA name of a tzinfo (zoneinfo, pytz, dateutil, datetime.timezone.utc)."""
    if tz is None:
        return None
    if isinstance(tz, str):
        return tz
    for attr in ("key", "zone"):
        name = getattr(tz, attr, None)
        if isinstance(name, str) and name:
            return name
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        if offset == dt.timedelta(0):
            return "UTC"
        hours, rest = divmod(offset, dt.timedelta(hours=1))
        if not rest:
            # POSIX sign: Etc/GMT-1 is UTC+01:00.
            return f"Etc/GMT{-hours:+d}"
    return None


def local_zone_name() -> str | None:
    tz = os.environ.get("TZ", "").lstrip(":")
    if "/" in tz or tz == "UTC":
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        return None
    marker = "/zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else None


def app_zone(app) -> str:
    conf = app.conf
    if conf.timezone:
        name = zone_name(conf.timezone)
        if name is None:
            die(f"cannot name the app's time zone {conf.timezone!r}; set `timezone` to an "
                "IANA name such as \"Europe/Paris\"")
        return name
    if conf.enable_utc:
        return "UTC"
    # enable_utc = False and no timezone: Celery uses the machine's local zone.
    name = local_zone_name()
    if name is None:
        die("the app has enable_utc = False and no `timezone`, so Celery uses this machine's "
            "local zone, and its IANA name cannot be found (TZ, /etc/localtime); set "
            "`timezone` in the app")
    return name


# ---------------------------------------------------------------------------------------
# crontab → cron

# (attribute, lowest, highest) in beatd's field order: minute hour day-of-month month day-of-week.
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day_of_month", 1, 31),
    ("month_of_year", 1, 12),
    ("day_of_week", 0, 6),
)
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN",
               "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
PART = re.compile(r"^(?:(\*)|([0-9]+|[a-z]+)(?:-([0-9]+|[a-z]+))?)(?:/([0-9]+))?$")


def cron_token(tok: str, attr: str) -> tuple[int, str] | None:
    """A number or a name as (value, how to write it), or None when unsure."""
    if tok.isdigit():
        return int(tok), str(int(tok))
    names = {"day_of_week": DAY_NAMES, "month_of_year": MONTH_NAMES}.get(attr)
    if names is None:
        return None
    # Celery reads the first three letters ("monday", "january").
    abbr = tok[:3].upper()
    if abbr not in names:
        return None
    i = names.index(abbr)
    return (i + 1 if attr == "month_of_year" else i), abbr


def cron_expand(text: str, lo: int, hi: int) -> set[int] | None:
    """What a cron field means in standard cron, or None for what beatd would not take."""
    out: set[int] = set()
    for part in text.split(","):
        m = re.match(r"^(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?$", part)
        if m is None:
            return None
        star, a, b, step = m.groups()
        step = int(step) if step else 1
        if step == 0:
            return None
        if star:
            start, end = lo, hi
        else:
            start = int(a)
            if b is None and m.group(4):
                return None  # `5/10`: "sloppy" ranges are refused by beatd
            end = int(b) if b is not None else start
        if start > end or start < lo or end > hi:
            return None
        out.update(range(start, end + 1, step))
    return out


def cron_from_string(orig: str, attr: str) -> str | None:
    """Celery's string written as a cron field, when it reads the same (wrap-around ranges
    such as "fri-mon", or a month name in the weekday field, do not)."""
    parts = []
    for raw in orig.lower().split(","):
        m = PART.match(raw.strip())
        if m is None:
            return None
        star, a, b, step = m.groups()
        if star:
            text = "*"
        else:
            ta = cron_token(a, attr)
            tb = cron_token(b, attr) if b is not None else None
            if ta is None or (b is not None and tb is None):
                return None
            if tb is not None and tb[0] < ta[0]:
                return None
            text = ta[1] if tb is None else f"{ta[1]}-{tb[1]}"
        parts.append(text + (f"/{int(step)}" if step else ""))
    return ",".join(parts)


def numeric(text: str, attr: str) -> str:
    """Names replaced by their numbers, for `cron_expand`."""
    names = {"day_of_week": DAY_NAMES, "month_of_year": MONTH_NAMES}.get(attr, ())
    base = 1 if attr == "month_of_year" else 0
    for i, n in enumerate(names):
        text = text.replace(n, str(i + base))
    return text


def cron_from_set(values: set[int], lo: int, hi: int) -> str:
    """An expanded set as `*/n`, ranges and lists."""
    v = sorted(values)
    if len(v) >= 2 and v[0] == lo:
        step = v[1] - v[0]
        if step > 1 and v == list(range(lo, hi + 1, step)):
            return f"*/{step}"
    parts, i = [], 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[j + 1] == v[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{v[i]}-{v[j]}")
        else:
            parts.extend(str(x) for x in v[i:j + 1])
        i = j + 1
    return ",".join(parts)


def cron_field(sched, attr: str, lo: int, hi: int) -> str:
    values = set(getattr(sched, attr))
    if values == set(range(lo, hi + 1)):
        # Always `*`: beatd (like Vixie cron) combines the day fields with OR unless one is
        # literally `*`, and treats an hour field of `*` or a step as elapsed time.
        return "*"
    orig = getattr(sched, "_orig_" + attr, None)
    if isinstance(orig, int) and not isinstance(orig, bool):
        orig = str(orig)
    if isinstance(orig, str):
        text = cron_from_string(orig, attr)
        # Kept only when standard cron reads it as the same set Celery expanded.
        if text is not None and cron_expand(numeric(text, attr), lo, hi) == values:
            return text
    return cron_from_set(values, lo, hi)


def crontab_to_cron(sched) -> str:
    fields = [cron_field(sched, attr, lo, hi) for attr, lo, hi in CRON_FIELDS]
    if fields[2] != "*" and fields[4] != "*":
        # Celery requires both day fields to match; beatd's `+` weekday prefix says AND.
        fields[4] = "+" + fields[4]
    return " ".join(fields)


def crontab_origin(sched) -> str:
    """`crontab(...)` as the user wrote it, for a comment."""
    args = []
    for attr, _, _ in CRON_FIELDS:
        orig = getattr(sched, "_orig_" + attr, "*")
        if orig != "*":
            args.append(f"{attr}={orig!r}")
    return f"crontab({', '.join(args)})"


# ---------------------------------------------------------------------------------------
# entries

KNOWN_OPTIONS = ("queue", "routing_key", "exchange", "priority", "expires", "headers")
ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}


def inherits(obj, base, methods) -> bool:
    """`obj` is a `base` whose scheduling methods are base's own (not a custom subclass)."""
    return isinstance(obj, base) and all(
        getattr(type(obj), m) is getattr(base, m) for m in methods
    )


def refuse_schedule(sched) -> None:
    from celery.schedules import crontab, schedule, solar

    cls = type(sched)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(sched, solar):
        raise Refused(
            f"solar({getattr(sched, 'event', '?')!r}, ...) fires at sunrise/sunset times that "
            "move every day; beatd has no solar schedules and no cron expression matches them"
        )
    if cls.__name__ == "clocked":
        raise Refused("a clocked (one-off) schedule; write it by hand as an `at = ...` entry")
    for base in (crontab, schedule):
        if isinstance(sched, base):
            raise Refused(
                f"schedule class {name} is a {base.__name__} that computes its own fire times "
                "(it overrides is_due or remaining_estimate), which its fields do not describe"
            )
    raise Refused(f"schedule class {name} is not a crontab or an interval beatd can express")


def schedule_lines(sched, relative: bool, app_tz: str, deadline) -> tuple[list[str], str]:
    """The `cron`/`every` lines of an entry (and its own timezone) and a note."""
    from celery.schedules import crontab, schedule

    if inherits(sched, crontab, ("remaining_estimate", "remaining_delta", "is_due")):
        lines = []
        cron = crontab_to_cron(sched)
        lines.append(f"cron = {toml_str(cron)}")
        tz = zone_name(sched.tz)
        if tz is None:
            raise Refused(f"cannot name the crontab's time zone {sched.tz!r}")
        if tz != app_tz:
            lines.append(f"timezone = {toml_str(tz)}")
        if deadline is not None:
            d = dt.timedelta(seconds=deadline)
            if d > dt.timedelta(0):
                lines.append(f"catch_up_window = {toml_str(humantime(d, 'beat_cron_starting_deadline'))}"
                             "  # beat_cron_starting_deadline")
            else:
                lines.append('catch_up = "none"  # beat_cron_starting_deadline = 0')
        note = f"# Celery: {crontab_origin(sched)}"
        if relative:
            note += " (relative=True has no effect on a crontab in Celery)"
        return lines, note
    if inherits(sched, schedule, ("remaining_estimate", "is_due")):
        every = sched.run_every
        if sched.relative:
            raise Refused(
                "relative=True rounds Celery's interval to its resolution in local time "
                "(an hourly interval fires on the hour); beatd's `every` is anchored "
                "instead: write a `cron` entry, or an `every` with an `anchor`, by hand"
            )
        if every <= dt.timedelta(0):
            raise Refused(f"interval {every} is not positive")
        if every < dt.timedelta(seconds=1):
            raise Refused(
                f"interval {every} is below beatd's 1s minimum (one message per fire time "
                "through the broker): run a loop inside a task instead"
            )
        text = humantime(every, "the interval")
        lines = [f"every = {toml_str(text)}"]
        note = (f"# Celery: every {text} from the last run; beatd: at anchor + k x {text}, "
                "anchor the Unix epoch (see the README, \"Coming from Celery beat\")")
        return lines, note
    refuse_schedule(sched)
    raise AssertionError("unreachable")


def route(app, task: str, args, kwargs, options: dict) -> dict:
    """The options as Celery's router resolves them (task_routes, task_default_queue)."""
    try:
        return dict(app.amqp.router.route(dict(options), task, tuple(args), dict(kwargs)))
    except Exception as e:  # a custom router can raise anything
        print(f"{PROG}: warning: task {task!r}: Celery's router failed ({e}); using the "
              "entry's own options", file=sys.stderr)
        return dict(options)


def option_lines(app, task: str, args, kwargs, options: dict) -> list[str]:
    routed = route(app, task, args, kwargs, options)
    lines, dropped = [], []
    queue = routed.pop("queue", None)
    qname = getattr(queue, "name", queue)
    if qname is not None:
        if not isinstance(qname, str):
            raise Refused(f"queue {queue!r} has no name")
        if qname != "celery" or "queue" in options:
            lines.append(f"queue = {toml_str(qname)}")
    for key in ("routing_key", "exchange"):
        if key in routed:
            v = routed.pop(key)
            v = getattr(v, "name", v)
            if v is None:
                continue
            if not isinstance(v, str):
                raise Refused(f"option {key} = {v!r} is not a string")
            lines.append(f"{key} = {toml_str(v)}")
    if "priority" in routed:
        p = routed.pop("priority")
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
                raise Refused(f"priority {p!r} is not 0-9 (kombu's Redis priorities)")
            lines.append(f"priority = {p}")
    if "expires" in routed:
        e = routed.pop("expires")
        if isinstance(e, dt.datetime):
            raise Refused(f"expires is an absolute time ({e.isoformat()}); beatd's `expires` "
                          "is a duration after each fire time")
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            e = dt.timedelta(seconds=e)
        if e is not None:
            if not isinstance(e, dt.timedelta):
                raise Refused(f"expires {e!r} is neither seconds nor a timedelta")
            lines.append(f"expires = {toml_str(humantime(e, 'expires'))}")
    if "headers" in routed:
        h = routed.pop("headers")
        if h:
            if not isinstance(h, dict):
                raise Refused(f"headers {h!r} is not a dict")
            lines.append(f"headers = {toml_value(h, 'headers')}")
    for key, v in routed.items():
        dropped.append(f"{key}={v!r}")
    if dropped:
        lines.append(f"# not carried over: {', '.join(dropped)}")
    return lines


def convert_entry(app, name, entry, app_tz: str, deadline) -> list[str]:
    from celery.schedules import maybe_schedule

    if not isinstance(name, str) or not name.strip():
        raise Refused("the key is not a non-empty string")
    if not isinstance(entry, dict):
        raise Refused(f"the value is a {type(entry).__name__}, not a dict")
    task = entry.get("task")
    if not isinstance(task, str) or not task:
        raise Refused("it has no `task` name")
    if entry.get("schedule") is None:
        raise Refused("it has no `schedule`")
    relative = bool(entry.get("relative", False))
    # As celery.beat.ScheduleEntry does: numbers and timedeltas become schedule().
    sched = maybe_schedule(entry["schedule"], relative, app=app)

    args = entry.get("args") or ()
    kwargs = entry.get("kwargs") or {}
    options = entry.get("options") or {}
    if not isinstance(args, (list, tuple)):
        raise Refused(f"args is a {type(args).__name__}, not a list or tuple")
    if not isinstance(kwargs, dict):
        raise Refused(f"kwargs is a {type(kwargs).__name__}, not a dict")
    if not isinstance(options, dict):
        raise Refused(f"options is a {type(options).__name__}, not a dict")

    sched_lines, note = schedule_lines(sched, relative, app_tz, deadline)
    lines = ["[[entry]]", f"name = {toml_str(name)}", f"task = {toml_str(task)}", note]
    lines += sched_lines
    if args:
        lines.append(f"args = {toml_value(list(args), 'args')}")
    if kwargs:
        lines.append(f"kwargs = {toml_value(kwargs, 'kwargs')}")
    lines += option_lines(app, task, args, kwargs, options)
    extra = sorted(set(entry) - ENTRY_KEYS)
    if extra:
        lines.append(f"# not carried over: entry keys {', '.join(extra)}")
    return lines


def load_app(spec: str):
    try:
        from celery import Celery, __version__
        from celery.app.utils import find_app
    except ImportError as e:
        die(f"cannot import celery ({e}); run this script with the Python your Celery app uses")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(spec)
    except Exception as e:
        die(f"cannot load the Celery app {spec!r}: {type(e).__name__}: {e}")
    if not isinstance(app, Celery):
        die(f"{spec!r} is a {type(app).__name__}, not a Celery app")
    try:
        # What `celery beat` does before reading the schedule (apps/beat.py, init_loader).
        app.loader.import_default_modules()
        app.finalize(auto=True)
    except Exception as e:
        die(f"cannot import the app's task modules: {type(e).__name__}: {e}")
    return app, __version__


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="celery-to-toml.py",
        description="Print a Celery app's beat_schedule as a beatd schedule file (TOML).",
        epilog="Exit codes: 0 every entry converted, 1 some refused (listed on stderr and at "
               "the top of the output), 2 the app could not be loaded.",
    )
    parser.add_argument("app", metavar="MODULE[:APP]",
                        help="the Celery app, as for `celery -A` (e.g. proj.celery:app)")
    ns = parser.parse_args(argv)
    # TOML is UTF-8 whatever the locale says.
    sys.stdout.reconfigure(encoding="utf-8")

    app, version = load_app(ns.app)
    app_tz = app_zone(app)
    deadline = app.conf.get("beat_cron_starting_deadline")
    schedule = app.conf.beat_schedule or {}

    blocks, refused = [], []
    for name, entry in schedule.items():
        try:
            blocks.append(convert_entry(app, name, entry, app_tz, deadline))
        except Refused as e:
            refused.append((name, str(e)))

    out = [f"# Generated by scripts/celery-to-toml.py from {ns.app} (Celery {version})."]
    if refused:
        out.append("# INCOMPLETE: these beat_schedule entries were not converted:")
        for name, why in refused:
            out.append(f"#   {name}: {why}")
    out += ["", "[defaults]"]
    note = "" if app.conf.timezone else "  # Celery's default (enable_utc)"
    out.append(f"timezone = {toml_str(app_tz)}{note}")
    for block in blocks:
        out.append("")
        out += block
    print("\n".join(out))

    if not schedule:
        print(f"{PROG}: the app's beat_schedule is empty", file=sys.stderr)
    for name, why in refused:
        print(f"{PROG}: entry {name!r} not converted: {why}", file=sys.stderr)
    if refused:
        print(f"{PROG}: {len(refused)} of {len(schedule)} entries not converted; the output "
              "is incomplete", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
