#!/usr/bin/env python3
"""Dependency hygiene: licences and yanked versions of every crate in Cargo.lock that the
provisioner (not its tests) can link, on any platform.

  python3 scripts/deps-report.py            # check: exit 1 on a yanked version or a licence
                                            # outside ALLOWED; prints a summary
  python3 scripts/deps-report.py --markdown # the licence table for LICENSES-THIRD-PARTY.md

Yanked versions are looked up in crates.io's sparse index (the registry cargo itself uses).
"""

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

# Permissive licences only; every crate's SPDX expression must be satisfiable from this set.
ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unlicense", "Unicode-3.0", "CDLA-Permissive-2.0",
}


def satisfiable(expression):
    """True if some choice in an SPDX expression (AND/OR/WITH, '/' as OR) uses only ALLOWED."""
    expr = expression.replace("/", " OR ")
    expr = re.sub(r"([A-Za-z0-9.\-+]+) WITH ([A-Za-z0-9.\-+]+)", lambda m: f"{m[1]}__WITH__{m[2]}", expr)
    tokens = re.findall(r"\(|\)|AND|OR|[^\s()]+", expr)
    pos = 0

    def parse_or():
        nonlocal pos
        value = parse_and()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            value = parse_and() or value
        return value

    def parse_and():
        nonlocal pos
        value = parse_atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            value = parse_atom() and value
        return value

    def parse_atom():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "(":
            value = parse_or()
            pos += 1  # ")"
            return value
        return token.replace("__WITH__", " WITH ") in ALLOWED

    return parse_or()


def packages():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked"], stderr=subprocess.DEVNULL))
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    by_id = {p["id"]: p for p in meta["packages"]}
    root = meta["resolve"]["root"]
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for dep in nodes[node]["deps"]:
            if all(k["kind"] == "dev" for k in dep["dep_kinds"]):
                continue
            stack.append(dep["pkg"])
    seen.discard(root)
    return [by_id[i] for i in seen]


def index_path(name):
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def yanked(pkg):
    source = pkg.get("source") or ""
    if "crates.io" not in source:
        return False
    url = f"https://index.crates.io/{index_path(pkg['name'])}"
    for line in fetch(url).splitlines():
        entry = json.loads(line)
        if entry["vers"] == pkg["version"]:
            return entry.get("yanked", False)
    return False


def fetch(url, attempts=4):
    """The body at url. A failed name lookup or connection is tried again (after 1, 2, 4 s): one
    DNS hiccup among a hundred parallel requests turned a whole CI run red."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read().decode()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == attempts - 1:
                raise
            print(f"deps-report: {url}: {error}; retrying", file=sys.stderr)
            time.sleep(2**attempt)


def main():
    pkgs = packages()
    by_licence = defaultdict(set)
    for p in pkgs:
        by_licence[p.get("license") or "UNKNOWN"].add(p["name"])
    if "--markdown" in sys.argv:
        print("| Licence (SPDX) | Crates | Names |\n|---|---|---|")
        for lic, names in sorted(by_licence.items(), key=lambda x: (-len(x[1]), x[0])):
            print(f"| {lic} | {len(names)} | {', '.join(sorted(names))} |")
        return 0
    problems = [f"{p['name']} {p['version']}: licence {p.get('license')!r} is not in the allowed set"
                for p in pkgs if not satisfiable(p.get("license") or "UNKNOWN")]
    with ThreadPoolExecutor(16) as pool:
        for p, is_yanked in zip(pkgs, pool.map(yanked, pkgs)):
            if is_yanked:
                problems.append(f"{p['name']} {p['version']} is yanked on crates.io")
    print(f"deps-report: {len(pkgs)} crates, {len(by_licence)} licence expressions, all checked "
          f"against crates.io's index for yanked versions")
    for problem in problems:
        print(f"deps-report: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
