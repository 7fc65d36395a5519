"""Lists the top-level imports of a WebAssembly component (no dependencies).

    python3 component_imports.py X.wasm            # one import name a line
    python3 component_imports.py --check X.wasm    # fails unless every import is one a Sluice
                                                   # host accepts
"""

import sys

ALLOWED = (
    "sluice:module/",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",  # linked without authority: no preopened directory
    "wasi:sockets/",  # linked without authority: TCP, UDP and name lookup off
)


def _leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def _name(b, i):
    n, i = _leb(b, i)
    return b[i : i + n].decode("utf-8"), i + n


def imports(data):
    if data[:4] != b"\0asm" or data[6:8] != b"\x01\x00":
        raise ValueError("not a WebAssembly component")
    names = []
    i = 8
    while i < len(data):
        sid = data[i]
        size, i = _leb(data, i + 1)
        end = i + size
        if sid == 10:  # import section
            count, j = _leb(data, i)
            for _ in range(count):
                kind = data[j]
                name, j = _name(data, j + 1)
                if kind == 0x01:  # a version suffix follows
                    _, j = _name(data, j)
                names.append(name)
                sort = data[j]
                j += 1
                if sort == 0x00:  # core module: 0x11 typeidx
                    _, j = _leb(data, j + 1)
                elif sort in (0x02, 0x03):  # value / type bound
                    bound = data[j]
                    j += 1
                    if not (sort == 0x03 and bound == 0x01):
                        _, j = _leb(data, j)
                else:  # func, component, instance: typeidx
                    _, j = _leb(data, j)
        i = end
    return names


def main(argv):
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    bad = []
    for path in paths:
        with open(path, "rb") as f:
            names = imports(f.read())
        for n in names:
            if check:
                if not n.startswith(ALLOWED):
                    bad.append("%s imports %s" % (path, n))
            else:
                print(n)
    for b in bad:
        print(b + " (a Sluice host accepts only %s)" % ", ".join(ALLOWED), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
