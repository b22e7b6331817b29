"""The README's C++ and CMake blocks, checked against what CI builds (issue #27).

Every ```cpp and ```cmake block of README.md carries a marker on the line
before it, one of:

  <!-- examples/X.cpp, shown whole ... -->   the block is that file, unchanged
  <!-- from examples/X.cpp ... -->          the block is a run of that file's lines
  <!-- compiled: NAME ... -->               the block is a fragment that
      tests/integration/examples/readme/NAME.cpp (or, for CMake, that folder's
      CMakeLists.txt) builds: written here to OUT/NAME.includes (its #include
      lines) and OUT/NAME.body (the rest), or OUT/NAME.cmake

so that no block of the README goes unbuilt. An unmarked block, a file that
differs, or a fragment no harness builds fails the check.

    readme_fragments.py SOURCE_DIR OUT_DIR
"""

import os
import re
import sys

BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```(cpp|cmake)\n(.*?)^```\n", re.S | re.M)


def main(src, out):
    readme = open(os.path.join(src, "README.md")).read()
    harness = os.path.join(src, "tests", "integration", "examples", "readme")
    os.makedirs(out, exist_ok=True)
    failures = []
    seen = 0
    for marker, lang, text in BLOCK.findall(readme):
        seen += 1
        first = text.splitlines()[0] if text else ""
        whole = re.match(r"<!-- (examples/[\w./]+), shown whole", marker or "")
        part = re.match(r"<!-- from (examples/[\w./]+)", marker or "")
        compiled = re.match(r"<!-- compiled: (\w+)", marker or "")
        if whole or part:
            path = (whole or part).group(1)
            shown = open(os.path.join(src, path)).read()
            if whole and text != shown:
                failures.append("the README shows %s changed" % path)
            if part and ("\n" + text) not in ("\n" + shown):
                failures.append("the README's block %r is not a run of %s's lines" % (first, path))
        elif compiled:
            name = compiled.group(1)
            if lang == "cmake":
                with open(os.path.join(out, name + ".cmake"), "w") as f:
                    f.write(text)
                if name + ".cmake" not in open(os.path.join(harness, "CMakeLists.txt")).read():
                    failures.append("no harness includes the CMake block %s" % name)
                continue
            if not os.path.exists(os.path.join(harness, name + ".cpp")):
                failures.append("no harness %s.cpp for the README's block %r" % (name, first))
            lines = text.splitlines(keepends=True)
            includes = "".join(l for l in lines if l.startswith("#include"))
            body = "".join(l for l in lines if not l.startswith("#include"))
            with open(os.path.join(out, name + ".includes"), "w") as f:
                f.write(includes)
            with open(os.path.join(out, name + ".body"), "w") as f:
                f.write(body)
        else:
            failures.append("the README's %s block %r has no marker saying what builds it" % (lang, first))
    if seen == 0:
        failures.append("no C++ or CMake block found in the README")
    for f in failures:
        print("readme_fragments: " + f, file=sys.stderr)
    print("readme_fragments: %d blocks checked" % seen)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
