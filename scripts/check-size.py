#!/usr/bin/env python3
"""Size limits of the Rust code in src/: no function over 120 lines, no file
over 800 lines, except the entries of EXEMPT below.

A function counts from the line of its `fn` keyword to the line of its
closing brace, both included; braces inside strings, character literals and
comments do not count. A function nested in another one counts for both.
Declarations without a body (trait methods, extern items) are not functions
here.

Prints one line per violation (and per exemption that no longer matches
anything, so the list cannot go stale). Exit status 1 when there is any;
with --report it prints the same lines and exits 0.

Usage: scripts/check-size.py [--report]
"""

import os
import sys

MAX_FN_LINES = 120
MAX_FILE_LINES = 800

# Exempt from the limits, with the reason. Keys are paths relative to the
# repository root; a function is "path::name".
EXEMPT = {
    # The decoder's flat match: one arm per pgoutput message kind, each a few
    # lines that read the message's fields in wire order. Splitting it would
    # scatter the wire format over helpers that each read one arm.
    "src/pgoutput/decode.rs::decode_message": "the decoder's flat match",
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_ident(c):
    return c.isalnum() or c == "_"


def code_chars(text):
    """Yield (line, char) for every character of `text` outside comments,
    string literals and character literals; a literal yields one placeholder
    character so that tokens on both sides stay apart."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            yield line - 1, c
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif c in "rb" and (i == 0 or not is_ident(text[i - 1])) and raw_string_at(text, i):
            start = i
            i = raw_string_end(text, i)
            line += text.count("\n", start, i)
            yield line, '"'
        elif c == '"':
            start, i = i, i + 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            line += text.count("\n", start, i)
            yield line, '"'
        elif c == "'":
            # A character literal ('a', '\n', '\u{7f}', '"') or a lifetime
            # ('a, 'static): a literal closes after one (escaped) character.
            if i + 1 < n and text[i + 1] == "\\":
                j = i + 2
                while j < n and text[j] != "'":
                    j += 1
                i = j + 1
                yield line, '"'
            elif i + 2 < n and text[i + 2] == "'":
                i += 3
                yield line, '"'
            else:
                yield line, c
                i += 1
        else:
            yield line, c
            i += 1


def raw_string_at(text, i):
    """Whether a raw string literal (r"..", r#".."#, br#".."#) starts at i."""
    if text[i] == "b":
        i += 1
        if i >= len(text) or text[i] != "r":
            return False
    i += 1
    while i < len(text) and text[i] == "#":
        i += 1
    return i < len(text) and text[i] == '"'


def raw_string_end(text, i):
    """The index just past the raw string literal starting at i."""
    if text[i] == "b":
        i += 1
    i += 1
    hashes = 0
    while text[i] == "#":
        hashes, i = hashes + 1, i + 1
    close = '"' + "#" * hashes
    end = text.find(close, i + 1)
    return len(text) if end < 0 else end + len(close)


def tokens(text):
    """(line, token) pairs: identifiers and single punctuation characters."""
    word, word_line = "", 0
    for line, c in code_chars(text):
        if is_ident(c):
            if not word:
                word_line = line
            word += c
            continue
        if word:
            yield word_line, word
            word = ""
        if not c.isspace():
            yield line, c
    if word:
        yield word_line, word


def functions(text):
    """(name, first line, last line) of every function with a body."""
    toks = list(tokens(text))
    found = []
    for k, (line, tok) in enumerate(toks):
        # `fn` followed by a name; `fn(u8) -> u8` is a pointer type.
        if tok != "fn" or k + 1 >= len(toks) or not is_ident(toks[k + 1][1][0]):
            continue
        name = toks[k + 1][1]
        depth, j = 0, k + 2
        while j < len(toks):
            t = toks[j][1]
            if t in "([":
                depth += 1
            elif t in ")]":
                depth -= 1
            elif depth == 0 and t in "{;":
                break
            j += 1
        if j >= len(toks) or toks[j][1] == ";":
            continue
        braces = 0
        while j < len(toks):
            t = toks[j][1]
            if t == "{":
                braces += 1
            elif t == "}":
                braces -= 1
                if braces == 0:
                    break
            j += 1
        last = toks[j][0] if j < len(toks) else toks[-1][0]
        found.append((name, line, last))
    return found


def main(argv):
    report = argv[1:] == ["--report"]
    if argv[1:] and not report:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    violations = []
    used = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, "src")):
        dirs.sort()
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            full = os.path.join(folder, f)
            rel = os.path.relpath(full, ROOT)
            with open(full, encoding="utf-8") as fh:
                text = fh.read()
            lines = text.count("\n") + (not text.endswith("\n") and text != "")
            if lines > MAX_FILE_LINES:
                if rel in EXEMPT:
                    used.add(rel)
                else:
                    violations.append(f"{rel}: {lines} lines (limit {MAX_FILE_LINES})")
            for name, first, last in functions(text):
                length = last - first + 1
                if length <= MAX_FN_LINES:
                    continue
                key = f"{rel}::{name}"
                if key in EXEMPT:
                    used.add(key)
                else:
                    violations.append(
                        f"{rel}:{first}: fn {name} is {length} lines (limit {MAX_FN_LINES})"
                    )
    for key in sorted(set(EXEMPT) - used):
        violations.append(f"{key}: exempt in scripts/check-size.py but within the limits; remove it")
    for v in violations:
        print(v)
    if violations and not report:
        print(f"{len(violations)} size problem(s); split them or, for a flat match "
              "or a data table, exempt them in scripts/check-size.py with the reason",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
