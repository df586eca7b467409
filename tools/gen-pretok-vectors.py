#!/usr/bin/env python3
"""tools/gen-pretok-vectors.py - reference splits for pinfer's pre-tokenizers (tests/data/pretok-vectors.txt).

    python3 tools/gen-pretok-vectors.py > tests/data/pretok-vectors.txt

Needs Python 3 with the `regex` module (PyPI "regex"); run by hand, the output is committed, so the
build and the tests need no Python. For each pre-tokenizer family, seeded random strings drawn from
a pool of awkward characters (ASCII classes, Latin-1, Greek, Cyrillic, Hebrew, Arabic digits, CJK,
Hangul, Thai, emoji, combining marks, joiners, exotic spaces, unassigned code points, ...) are split
the way llama.cpp splits them (src/llama-vocab.cpp + src/unicode.cpp in ggml-org/llama.cpp):

  - gpt-2 and llama3: the real regexes of those tokenizers, run by the `regex` module (llama.cpp
    replaces these two by hand-written splitters meant to be equivalent);
  - every other regex that uses \\p{..}: llama.cpp runs it with std::regex over a "collapsed" text in
    which each non-ASCII code point is one marker per class (whitespace -> U+000B; numbers; punctuation;
    everything else -> the letter marker), \\p{X} matching the ASCII members of X or its marker; this
    script does the same with private-use code points as markers;
  - regexes with explicit ranges: over the real text, non-ASCII whitespace replaced by U+000B.

Regexes of one family apply in turn, each splitting every piece of the previous one; matches and
the gaps between them both become pieces. Output lines: FAMILY <TAB> code points (hex) <TAB> piece
lengths in code points.
"""
import importlib.util
import os
import random
import sys
import unicodedata

import regex

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

WS = set(range(9, 14)) | {0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000} | set(range(0x2000, 0x200B))
M_L, M_N, M_P = '\ue000', '\ue001', '\ue002'
L = r'A-Za-z\ue000'
N = r'0-9\ue001'
P = r'\x21-\x23\x25-\x2A\x2C-\x2F\x3A-\x3B\x3F-\x40\x5B-\x5D\x5F\x7B\x7D\ue002'  # llama.cpp's k_ucat_map


def collapse(c):
    o = ord(c)
    if o < 128:
        return c
    if o in WS:
        return '\x0b'
    cat = unicodedata.category(c)[0]
    return M_N if cat == 'N' else M_P if cat == 'P' else M_L


def blank(c):
    return '\x0b' if ord(c) >= 128 and ord(c) in WS else c


def deepseek_letters():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location('gen_unicode', os.path.join(here, 'gen-unicode.py'))
    g = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(g)
    return ''.join('%s-%s' % (regex.escape(chr(a)), regex.escape(chr(b)))
                   for a, b in g.class_ranges(g.DEEPSEEK_LLM_LETTERS))


CJK = r'[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+'
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n" + L + N + r"]?[" + L + r"]+|[" + N +
         r"]| ?[^\s" + L + N + r"]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# family -> [(text view, regex)]; view: 'u' real text, 'c' collapsed, 'b' non-ASCII blanks as U+000B
FAMILIES = {
    'gpt-2': [('u', GPT2)],
    'llama3': [('u', LLAMA3)],
    'qwen2': [('c', QWEN2)],
    'deepseek-llm': [('b', r'[\r\n]'), ('b', r'\s?[' + deepseek_letters() + r']+'),
                     ('b', '\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+'), ('b', r'\s+$'),
                     ('b', CJK), ('c', '[' + N + ']+')],
    'deepseek-coder': [('b', r'[\r\n]'), ('c', r'\s?[' + L + ']+'), ('c', r'\s?[' + P + ']+'), ('b', CJK),
                       ('c', '[' + N + ']')],
    'falcon': [('c', '[' + P + r'\$\+<=>\^~\|`]+'), ('u', GPT2), ('b', r'[0-9][0-9][0-9]')],
    'starcoder': [('c', '[' + N + ']'), ('u', GPT2)],
    'default': [('c', '[' + P + r'\$\+<=>\^~\|]+'), ('u', GPT2), ('c', '[' + N + ']+'), ('b', r'[0-9][0-9][0-9]')],
}

POOL = (list("abcXYZ'sStTrReEvVmMlLdD 0123456789!?.,;:-_()[]{}$+<=>^~|`\"#%&*/\\@") + [' '] * 8 +
        ['\n', '\r', '\t', '\n\n', '\r\n', '   '] +
        list('\u00e9\u00fc\u00df\u00f1\u00f8\u00b5\u00d7\u00f7\u20ac\u00a3\u00a5\u00a9\u00ae\u00b0\u00b1\u00b2'
             '\u00b3\u00bc\u00bd\u0391\u03a9\u03b1\u03c9\u0416\u0436\u05d0\u0661\u0662\u0663\u4e2d\u6587\u65e5'
             '\u672c\u8a9e\ud55c\uad6d\uc5b4\uac00\u0e44\u0e17\u0e22') +
        ['\u0301', '\u0308', '\u200d', '\ufe0f', '\U0001F600', '\U0001F44D', '\u2160', '\u00a0', '\u3000',
         '\u2028', '\u0085', '\u1680', '\u2000', '\u202f', '\u205f', '\uff01', '\uff21', '\u3001', '\u3002',
         '\u2018', '\u201c', '\u00ad', '\u0378', '\ue000', '\u2126', '\u212a', '\u1fbe', '\ufb01'])


def split(pieces, view, pat):
    out = []
    for s in pieces:
        t = ''.join(collapse(c) for c in s) if view == 'c' else ''.join(blank(c) for c in s) if view == 'b' else s
        pos = 0
        for m in regex.finditer(pat, t):
            if m.start() > pos:
                out.append(s[pos:m.start()])
            out.append(s[m.start():m.end()])
            pos = m.end()
        if pos < len(s):
            out.append(s[pos:])
    return out


def main():
    per_family = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    w = sys.stdout.write
    for fam, passes in FAMILIES.items():
        rnd = random.Random(fam)
        for _ in range(per_family):
            s = ''.join(rnd.choice(POOL) for _ in range(rnd.randint(1, 24)))
            pieces = [s]
            for view, pat in passes:
                pieces = split(pieces, view, pat)
            w('%s\t%s\t%s\n' % (fam, ' '.join('%x' % ord(c) for c in s), ' '.join(str(len(p)) for p in pieces)))


if __name__ == '__main__':
    main()
