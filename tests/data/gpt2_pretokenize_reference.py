# The oracle for kiln's hand-written GPT-2 pre-tokeniser (data/pretokenizer.cpp): GPT-2's
# pattern run by Python's own `re` engine. The standard library's `re` has no \p{L}, so the
# classes are spelled out from unicodedata (L* and N* general categories) and \s is the
# Unicode White_Space list, which is what GPT-2's `regex` module matches.
#
#   python3 gpt2_pretokenize_reference.py IN.json OUT.json
#   IN: a JSON list of strings; OUT: for each string, the list of its pieces.
import json
import re
import sys
import unicodedata


def char_class(first_letter):
    ranges, start = [], None
    for cp in range(0x110001):
        inside = cp < 0x110000 and unicodedata.category(chr(cp))[0] == first_letter
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append("\\U%08x-\\U%08x" % (start, cp - 1))
            start = None
    return "".join(ranges)


LETTER = char_class("L")
NUMBER = char_class("N")
SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
PATTERN = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{LETTER}]+| ?[{NUMBER}]+| ?[^{SPACE}{LETTER}{NUMBER}]+"""
    rf"""|[{SPACE}]+(?![^{SPACE}])|[{SPACE}]+"""
)

with open(sys.argv[1], encoding="utf-8") as source:
    texts = json.load(source)
with open(sys.argv[2], "w", encoding="utf-8") as target:
    json.dump([PATTERN.findall(text) for text in texts], target)
