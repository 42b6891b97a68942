#!/usr/bin/python3
"""ctest readme_figures: the README's Performance figures are what bench/results/*.json
say (bench/figures.py --check), and the check does catch a figure edited by hand and a
README without its markers."""
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "bench", "figures.py")


def check(readme):
    return subprocess.run([sys.executable, FIGURES, "--check", "--readme", readme], capture_output=True, text=True)


def main():
    real = check(os.path.join(REPO, "README.md"))
    if real.returncode != 0:
        print("README.md: " + real.stderr.strip())
        return 1
    generated = subprocess.run([sys.executable, FIGURES, "--print"], capture_output=True, text=True, check=True).stdout
    rows = [line for line in generated.splitlines() if line.startswith("| ") and any(c.isdigit() for c in line)]
    if not rows:
        print("the generated figures hold no table row with a number: no JSON read?")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "README.md")
        shutil.copy(os.path.join(REPO, "README.md"), copy)
        text = open(copy).read()
        # One digit of one figure changed by hand.
        row = rows[0]
        i = next(k for k, c in enumerate(row) if c.isdigit())
        edited = row[:i] + str((int(row[i]) + 1) % 10) + row[i + 1:]
        with open(copy, "w") as f:
            f.write(text.replace(row, edited, 1))
        r = check(copy)
        if r.returncode != 1 or "differs" not in r.stderr:
            print("an edited figure was not caught: exit %d, %s" % (r.returncode, r.stderr.strip()))
            return 1
        # --write puts it right again.
        subprocess.run([sys.executable, FIGURES, "--write", "--readme", copy], check=True)
        if check(copy).returncode != 0 or open(copy).read() != text:
            print("--write did not restore the README")
            return 1
        # No markers: a clear refusal, not a silent pass.
        with open(copy, "w") as f:
            f.write("# README without figures\n")
        r = check(copy)
        if r.returncode != 2 or "marker" not in r.stderr:
            print("a README without markers: exit %d, %s" % (r.returncode, r.stderr.strip()))
            return 1
    print("README figures match bench/results; an edit and a missing marker are caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
