#!/usr/bin/env python3
"""The closing summary of scripts/test.sh: one line per suite of one build, with where it
ran (native, nested) and its result, from ctest's list of tests and the JUnit files of
its runs.

  test-summary.py BUILD_NAME BUILD_DIR [--counts FILE] [--left-out NAME=REASON ...] RUN.xml:WHERE ...

--counts appends "passed failed skipped left_out" to FILE, for the run's total.

A suite labelled `kvm` that was skipped, or that no run reports, is a failure: the run
could have given it KVM (natively or in the nested VM), unless it is named in --left-out,
whose reason is printed. A suite with a second report (NAME.rerun.xml: it failed, and ran
again) takes the second result, flagged as flaky and counted apart. Other suites may be
skipped (for a tool this machine lacks); they are counted apart, never as passed. Exits 1
if any suite failed.
"""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET


def suites(build_dir):
    """{name: labels} for every test ctest knows in build_dir."""
    out = subprocess.run(["ctest", "--show-only=json-v1"], cwd=build_dir, capture_output=True, text=True, check=True)
    result = {}
    for t in json.loads(out.stdout)["tests"]:
        labels = []
        for p in t.get("properties", []):
            if p["name"] == "LABELS":
                labels = p["value"]
        result[t["name"]] = labels
    return result


def results(path, where):
    """{name: (where, outcome, seconds, message)} from one JUnit file of ctest."""
    found = {}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"test-summary: {path}: {e}", file=sys.stderr)
        return found
    for case in root.iter("testcase"):
        status = case.get("status", "")
        skipped = case.find("skipped")
        if status == "run":
            outcome = "passed"
        elif skipped is not None or status in ("notrun", "disabled"):
            outcome = "skipped"
        else:
            outcome = "failed"
        message = ""
        out = case.findtext("system-out") or ""
        if outcome == "skipped":
            message = next((l.strip() for l in out.splitlines() if "SKIPPED" in l or "skipped" in l), "")
        found[case.get("name")] = (where, outcome, float(case.get("time") or 0), message)
    return found


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    build_name, build_dir, rest = argv[1], argv[2], argv[3:]
    left_out = {}
    runs = []
    counts_file = None
    i = 0
    while i < len(rest):
        if rest[i] == "--counts":
            counts_file = rest[i + 1]
            i += 2
        elif rest[i] == "--left-out":
            name, _, reason = rest[i + 1].partition("=")
            left_out[name] = reason
            i += 2
        else:
            path, _, where = rest[i].rpartition(":")
            runs.append((path, where))
            i += 1
    seen, reruns = {}, {}
    for path, where in runs:
        (reruns if path.endswith(".rerun.xml") else seen).update(results(path, where))

    counts = {"passed": 0, "failed": 0, "skipped": 0, "left out": 0, "passed on a second run": 0}
    print(f"== summary of the {build_name} build ({build_dir})")
    print(f"{'suite':<30} {'where':<8} {'result':<9} {'time':>8}  note")
    for name, labels in sorted(suites(build_dir).items()):
        kvm = "kvm" in labels
        if name in seen:
            where, outcome, secs, note = seen[name]
            if outcome == "failed" and name in reruns:
                _, again, secs2, _ = reruns[name]
                outcome, secs = again, secs + secs2
                note = f"FAILED on its first run, {again} on a second: flaky (its first run's output is above)"
                if again == "passed":
                    counts["passed on a second run"] += 1
            if outcome == "skipped" and kvm and name not in left_out:
                outcome, note = "failed", f"skipped where KVM was available: {note}"
            if outcome == "skipped" and name in left_out:
                outcome, note = "left out", left_out[name]
            time = f"{secs:.0f} s"
        elif name in left_out:
            where, outcome, time, note = "-", "left out", "", left_out[name]
        else:
            where, outcome, time, note = "-", "failed", "", "no run reports it (see the runs above)"
        counts[outcome] += 1
        print(f"{name:<30} {where:<8} {outcome:<9} {time:>8}  {note}")
    print(f"== {build_name} build: {counts['passed']} passed ({counts['passed on a second run']} of them on a second run), "
          f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['left out']} left out")
    if counts_file:
        with open(counts_file, "a") as f:
            f.write(f"{counts['passed']} {counts['failed']} {counts['skipped']} {counts['left out']}\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
