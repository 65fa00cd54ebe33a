r"""Answer equivalence: decides whether two answer strings (model output or gold
labels, LaTeX-ish) denote the same mathematical object, without ever evaluating
them as code.

Equivalence is checked in layers, cheapest first:
  1. normalise the LaTeX string (a \boxed{} is reduced to its content, math
     delimiters $ \( \[ and a lead-in "Answer:" are dropped; spacing,
     \left/\right, units, \dfrac, 1,000, <= -> \le, != -> \neq, a plain name
     before a value is a label: x = 5 -> 5, the value after the last \approx
     is the answer, inequalities in x, f(x) or |x| -> intervals, "or" lists,
     plain numbers -> canonical fraction) and compare strings;
  2. split structured answers (tuples, intervals, sets, unordered solution
     lists, \pm, matrices, equations, relations) and compare their parts
     recursively. Any other left side of an equation counts when both answers
     have one (\cos(x) = a is not \sin(x) = a) and is dropped only against an
     answer without one (p(x) = x^2+1 vs x^2+1), as is a left side built
     from names only before a value (AB/CD = 2, u:v = 2, m+n = 17 vs 2, 2,
     17). Assignments name a tuple's entries in the order written
     (m=3,n=1;m=5,n=1 is (3,1),(5,1)). Relations compare as relations:
     L < R and L' < R' are equal if R-L = c (R'-L') with c > 0;
  3. parse what is left with our own small LaTeX parser (grammar below, at
     _Parser) straight into sympy objects and test whether their difference
     is exactly zero (rationals exactly, except that a decimal of 10 or more
     significant digits is the repeating rational it rounds or truncates,
     _rounds_to; otherwise numerically, with sympy raising the precision up to
     300 digits, at a few fixed random points when there are variables).
Answers are model output, i.e. hostile: nothing here calls eval/exec/sympify
on them; the parser only knows a whitelist of tokens, and it refuses huge
exponents, factorials, roots and nesting up front so sympy stays fast. Layer 2
and 3 run in a worker process (this file, run as `grader.py --serve`) that is
killed when one public call's symbolic work passes TIME_LIMIT_S, from any
thread (see _equal).
A false positive is worse than a false negative: when unsure, answers differ.
Nothing here raises: every input gets a verdict.

Public API: normalize_answer, is_equiv, vote_classes (equivalence classes of a
group of answers, for the majority vote), TIME_LIMIT_S.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import sympy

__all__ = ["normalize_answer", "is_equiv", "vote_classes", "TIME_LIMIT_S"]

MAX_SYMBOLIC_LEN = 1000   # longer answers are only compared as strings
MAX_STRUCT_LEN = 3000     # longer answers are not split into tuples/sets
MAX_ITEMS = 32            # longest tuple/set/matrix we compare element-wise
TIME_LIMIT_S = 3.0        # hard cap on the symbolic work of one public call (any thread)

# ----------------------------------------------------------------------------
# Normalisation: strings that mean the same thing should become identical,
# so that most equal answers merge without touching sympy.
_UNICODE = str.maketrans({"−": "-", "–": "-", "×": r"\times ", "·": r"\cdot ",
                          "÷": r"\div ", "π": r"\pi ", "∞": r"\infty ", "√": r"\sqrt ",
                          "≤": r"\le ", "≥": r"\ge ", "±": r"\pm ", "∪": r"\cup ", "≈": r"\approx ",
                          "°": "", "θ": r"\theta ", "≠": r"\neq ",
                          # LaTeX that went through a non-raw Python string: "\frac" -> form feed + "rac"
                          "\f": r"\f", "\a": r"\a", "\b": r"\b", "\v": r"\v"})
_SIMPLE_SUBS = [(re.compile(p), r) for p, r in [
    (r"\\\$|\$", ""),
    (r"(?<!\\)\\[()\[\]]", " "),          # math delimiters \( \) \[ \], not "\\[" nor [0,7)
    (r"[\t\r](?=[a-z]{2})", lambda m: "\\" + "tr"[m.group() == "\r"]),   # "\text" as tab + "ext"
    (r"(?<!\\)\\\\(?=(?:[dtc]?frac|sqrt|pi|text|cdot|times|left|right|infty|pm)(?![a-zA-Z]))",
     r"\\"),                                               # over-escaped "\\\\sqrt"
    (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"),
    # one spelling per relation: <= \leq \leqslant -> \le; != \ne \not= -> \neq
    # (but "5!=120" is a factorial)
    (r"<=|\\leq?(?:slant)?(?![a-zA-Z])", r"\\le "), (r">=|\\geq?(?:slant)?(?![a-zA-Z])", r"\\ge "),
    (r"(?<![\d!\\])!=|\\neq?(?![a-zA-Z])|\\not\s*=", r"\\neq "),
    (r"(?<!\\);", ","),                                     # (0;-2;6): semicolons separate items
    (r"\\(?:left|right)(?![a-zA-Z])\.?", ""),              # \left( -> (, \right. -> ""
    (r"\\[lr]?vert(?![a-zA-Z])", "|"),                      # \lvert x \rvert -> |x|
    (r"\\(?:displaystyle|textstyle|limits|nolimits)(?![a-zA-Z])", ""),
    (r"(\d),\\!\s*(?=\d)", r"\1,"),                          # 10,\!080 -> 10,080
    (r"\s*\{\s*,\s*\}\s*", ","),                                  # 14{,}916, 14 {, }916
    (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),
    (r"\\(?:mbox|textbf|textit|textrm|textup|textnormal|mathrm|mathbf|mathit|mathsf"
     r"|operatorname)(?![a-zA-Z])", r"\\text"),
    (r",?\s*\\text\s*\{\s*(?:or|and)\s*\}\s*", ","),          # x=1 \text{ or } x=2; 19, 46, \text{ and } 82
    # 6 and 8, (7,11) or (11,7), (4,9)or(9,4): after a number or a closing bracket, not inside a word (floor)
    (r"(?<=[\d})\]])\s*,?\s*(?:or|and)(?:(?![a-zA-Z])|(?=[a-zA-Z]_?\w{0,3}\s*=))\s*(?=\S)", ","),   # x=3orx=4
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", ""),
    (r"\\?%", ""),                                           # 50\% == 50
    (r"_\{(\d+)\}", r"_\1"),                                 # 204_{5} -> 204_5
    (r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}"),            # \frac12, \frac 34
    (r"\\frac\s*(\d)\s*(?=\{)", r"\\frac{\1}"),              # \frac9{19}
    (r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}"),      # \frac{270}7
    (r"\\sqrt\s*(\d)", r"\\sqrt{\1}"),                       # \sqrt2
]]
_SPACING = re.compile(r"\\(\\|[,;:! ])|\\q?quad(?![a-zA-Z])|~")  # keeps "\\" (matrix rows)
_TRAILING_TEXT = re.compile(r"(?<=\S)\s*\\text\s*\{[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_TEXT = re.compile(r"\\text\s*\{([^{}]*)\}")
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer(?![a-zA-Z])\s*(?:is(?![a-zA-Z])\s*)?:?\s*(?=\S)",
                      re.I)                      # "Final answer: 9", "The answer is 9"
_UNITS = re.compile(r"(?<=[\d}])\s*(?:units?|square\s+units|sq\s+units|cm|mm|km|meters?|"
                    r"inch|inches|ft|feet|foot|yards?|miles?|degrees?|dollars?|cents?|"
                    r"seconds?|minutes?|hours?|days?|weeks?|years?|mph|pounds?|kg|grams?|"
                    r"percent|percentage|pct|ways|students|people|points|digits|integers)"
                    r"(?:\^\{?[23]\}?)?$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:(?:,\d{3})+|(?: \d{3})+)(?:\.\d+)?")   # 1,000 / 1 000
_SQUEEZE = re.compile(r"(\\[a-zA-Z]+)?\s+")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
_FRAC_RE = re.compile(r"([+-]?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")
_MIXED_RE = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_INEQ_RE = re.compile(r"(<=|>=|<|>|\\[lg]eq?(?:slant)?(?![a-zA-Z]))")
# What may stand left of "=" as a mere name: x, a_3, S_{PQR}, f(x), |AB|, \theta, (p,q).
_NAME = r"(?:[a-zA-Z]{1,3}|\\[a-zA-Z]+)(?:_\w+|_\{[^{}]{1,40}\})?"
_LHS_RE = re.compile(rf"\|?{_NAME}(?:\([a-zA-Z]\))?\|?|\((?:{_NAME},)+{_NAME}\)")
# A left side that names a quantity built from named ones, with no number in it: m+n, AB/CD, u:v, S_{PQR}:S,
# \frac{AB}{CD}, [ABC], |AB|:|CD|, \angle ABC, \overline{AB}. It is a label only before a value (m+n = 17);
# x+y = 2x+3 stays an equation. Each factor matches one way only, so a failed match is linear.
_FACTOR = (r"(?:[a-zA-Z]|\\[a-zA-Z]+(?![a-zA-Z]) ?|\[[a-zA-Z]+\]|\|[a-zA-Z]+\|"
           r"|\\(?:overline|bar|vec|hat|angle|triangle)\{[a-zA-Z]+\})(?:_(?:\d+(?!\d)|[a-zA-Z]|\{[^{}]{1,40}\}))?")
_QTY = rf"(?:{_FACTOR})+(?:[-+*/:](?:{_FACTOR})+)*"
_QUANTITY_RE = re.compile(rf"{_QTY}|\\frac\{{{_QTY}\}}\{{{_QTY}\}}")
# A label normalisation may drop: a plain name, not f(x) or \cos(x), which say what the value is of.
_LABEL_RE = re.compile(rf"\|?{_NAME}\|?|\((?:{_NAME},)+{_NAME}\)")


def _squeeze(s: str) -> str:
    # Drop whitespace, but keep one space after a command followed by a
    # letter/digit ("\pi r" is not the unknown command "\pir") and between
    # two digits ("1 2" is not 12; "1 000" was joined before).
    def space(m):
        cmd, after = m.group(1) or "", s[m.end():m.end() + 1]
        keep = after.isalnum() and (cmd or s[m.start() - 1:m.start()].isdigit() and after.isdigit())
        return cmd + " " if keep else cmd
    return _SQUEEZE.sub(space, s)


def _fmt(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _as_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number / simple fraction, else None."""
    if len(s) > 300:
        return None
    if _NUMBER_RE.fullmatch(s):
        return Fraction(s)
    m = _FRAC_RE.fullmatch(s)
    if m and int(m[3] or m[5]) != 0:
        value = Fraction(int(m[2] or m[4]), int(m[3] or m[5]))
        return -value if m[1] == "-" else value
    m = _MIXED_RE.fullmatch(s)           # 1\frac{4}{5}: a mixed number if proper
    if m and 0 < int(m[3]) < int(m[4]):
        value = int(m[2]) + Fraction(int(m[3]), int(m[4]))
        return -value if m[1] else value
    return None


DECIMAL_DIGITS = 10   # a decimal with this many significant digits may stand for a repeating rational


def _places(q: int) -> int | None:
    """The decimal places of 1/q if it terminates (q = 2^a 5^b, at most 400 places), else None."""
    twos = (q & -q).bit_length() - 1
    q, fives = q >> twos, 0
    while q % 5 == 0 and fives <= 400:
        q, fives = q // 5, fives + 1
    return max(twos, fives) if q == 1 and max(twos, fives) <= 400 else None


def _rounds_to(x: Fraction, r: Fraction) -> bool:
    """Is x a decimal of >= DECIMAL_DIGITS significant digits that is the repeating rational r rounded (half
    up) or truncated at x's last digit? 0.142857142857143 and 0.1428571428 are 1/7; 0.14, 0.1428571 and
    0.1428571430 are not. Rationals only: no decimal is an irrational value (\\pi, \\sqrt{2}); and two
    decimals, or a decimal and a terminating fraction, are equal only when they are one number."""
    places = _places(x.denominator)
    if places is None or (x < 0) != (r < 0) or len(str(r.denominator)) > 400 or _places(r.denominator) is not None:
        return False                          # x is not a decimal (of sane length), or r terminates
    digits, scaled = abs(x) * 10 ** places, abs(r) * 10 ** places
    return len(str(digits)) >= DECIMAL_DIGITS and digits in (int(scaled), int(scaled + Fraction(1, 2)))


def _decimal_equal(a: Fraction, b: Fraction) -> bool:
    """Two distinct rationals are one answer only if either is the other's long decimal (_rounds_to)."""
    return _rounds_to(a, b) or _rounds_to(b, a)


def _has_letters(s: str) -> bool:
    return re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s)) is not None


# x, or a function of it: 2 < g(t) < 5 and -1 \le \sin x \le 1 are intervals, the function's range
_BOUNDED = re.compile(rf"[a-zA-Z]|{_NAME}\([a-zA-Z]\)|\\[a-zA-Z]+ [a-zA-Z]")
_ABS = re.compile(r"\|[a-zA-Z](?:([-+])([^|]+))?\|")        # |w|, |x-1|: 2 \le |w| \le 3 is [-3,-2] \cup [2,3]


def _positive(s: str) -> bool:
    """A bound with no letter and no sign anywhere (3, \\frac{1}{2}, \\sqrt{3}) is a positive value or 0."""
    return bool(s) and not _has_letters(s) and not re.search(r"[-+]|\\pm", s)


def _centre(s: str) -> str | None:
    """|x| -> "", |x-1| -> "1", |x+\\frac12| -> "-\\frac12" (the shift must be a plain positive value); else None."""
    m = _ABS.fullmatch(s)
    if not m or (m[1] and not _positive(m[2])):
        return None
    return "" if not m[1] else m[2] if m[1] == "-" else "-" + m[2]


def _inequality_to_interval(s: str) -> str:
    """x > 3 -> (3,\\infty); 1 <= x < 2 -> [1,2); 5 > g(t) > 2 -> (2,5); |x| < 3 -> (-3,3); |x-1| < 2 ->
    (1-2,1+2); 2 < |x| <= 3 -> [-3,-2) \\cup (2,3]. An absolute value's bounds must be plain positive
    values. Anything else unchanged."""
    parts = [p.strip() for p in _INEQ_RE.split(s)]
    less = lambda op: op[0] == "<" or op.startswith(r"\l")
    closed = lambda op: op not in ("<", ">")
    flip = lambda op: (">" if less(op) else "<") + ("=" if closed(op) else "")
    left, right = lambda op: "[" if closed(op) else "(", lambda op: "]" if closed(op) else ")"
    bounded = lambda t: _BOUNDED.fullmatch(t) or _centre(t) is not None
    at = lambda c, sign, v: f"{c}{sign}{v}" if c else sign.strip("+") + v    # the centre c -/+ v
    if len(parts) == 3:
        lhs, op, rhs = parts
        if bounded(rhs) and not bounded(lhs):
            lhs, rhs, op = rhs, lhs, flip(op)  # 3 < x  ->  x > 3
        c = _centre(lhs)
        if c is not None and _positive(rhs):
            if less(op):                          # |x| < 3
                return left(op) + at(c, "-", rhs) + "," + at(c, "+", rhs) + right(op)
            return f"(-\\infty,{at(c, '-', rhs)}{right(op)}\\cup{left(op)}{at(c, '+', rhs)},\\infty)"
        if not _BOUNDED.fullmatch(lhs) or not rhs or _has_letters(rhs):
            return s
        if less(op):
            return "(-\\infty," + rhs + right(op)
        return left(op) + rhs + ",\\infty)"
    if len(parts) == 5 and not less(parts[1]) and not less(parts[3]):   # 5 > x > 2  ->  2 < x < 5
        parts = [parts[4], flip(parts[3]), parts[2], flip(parts[1]), parts[0]]
    if len(parts) == 5 and less(parts[1]) and less(parts[3]):
        lo, op1, mid, op2, hi = parts
        if _BOUNDED.fullmatch(mid) and lo and hi and not _has_letters(lo) and not _has_letters(hi):
            return left(op1) + lo + "," + hi + right(op2)
        c = _centre(mid)
        if c is not None and _positive(lo) and _positive(hi):
            if _as_fraction(lo) == 0 and closed(op1):    # 0 <= |x| < 3: one interval
                return left(op2) + at(c, "-", hi) + "," + at(c, "+", hi) + right(op2)
            return (f"{left(op2)}{at(c, '-', hi)},{at(c, '-', lo)}{right(op1)}\\cup"
                    f"{left(op1)}{at(c, '+', lo)},{at(c, '+', hi)}{right(op2)}")
    return s


def normalize_answer(ans: str) -> str:
    """Canonical string form of an answer ('' for no/unusable answer)."""
    if not isinstance(ans, str):
        return ""
    s = ans.strip()
    if "\\boxed" in s or "\\fbox" in s:  # a gold label may hold its own box: its content is the answer
        from rewards import extract_answer  # imported here: rewards imports this module
        s = extract_answer(s) or ""
    if len(s) > MAX_STRUCT_LEN:    # too long to be a real answer: compare raw, don't cache
        return s
    return _normalize(s)


def _strip_names(s: str) -> str:
    """x = 5 -> 5; x = 1, x = 2 -> 1,2; n = 1, 2 -> 1,2; x = 5+6 = 11 -> 11.

    A name is only a label when the right side is a value (y = 2x+3 stays an
    equation), it names the whole answer: x = 1, y = 2 keeps its names, which
    tell its values apart (so its items are normalised with top=False), and it
    is a plain name: \\cos(x) = a keeps its left side, which _equiv_cached
    drops only against an answer without one (\\sin(x) = a is another answer).
    """
    items = [_split_top(_approximate(item), "=") for item in _split_top(s, ",")]
    for parts in items:
        if len(parts) > 2 and _LHS_RE.fullmatch(parts[0]):
            del parts[1:-1]                      # x = 5+6 = 11 -> x = 11
    named = [len(p) == 2 and bool(_LABEL_RE.fullmatch(p[0])) and not _has_letters(p[1]) for p in items]
    if (all(named) and len({p[0] for p in items}) == 1) or (named[0] and all(len(p) == 1 for p in items[1:])):
        items = [p[1:] if n else p for p, n in zip(items, named)]
    return ",".join("=".join(p) for p in items)


def _approximate(item: str) -> str:
    """y \\approx 7 -> y = 7; t = 2+3 = 5 \\approx 5.0 -> t = 5.0; 5 \\approx 5.0 -> 5.0. The value after the
    last \\approx is the answer (a chain ends with it); a name before the chain stays, as a label."""
    if not re.search(r"\\approx(?![a-zA-Z])", item):
        return item
    *chain, last = (part.strip() for part in _split_top(item, r"\approx"))
    if not last:
        return item
    lhs = _split_top(chain[0], "=")[0].strip()
    return f"{lhs}={last}" if _LHS_RE.fullmatch(lhs) else last


@functools.lru_cache(maxsize=1 << 15)
def _normalize(s: str, top: bool = True) -> str:
    s = s.translate(_UNICODE)
    for pattern, repl in _SIMPLE_SUBS:
        s = pattern.sub(repl, s)
    s = _SPACING.sub(lambda m: {"\\": "\\\\", "!": ""}.get(m.group(1), " "), s).strip()  # \! is negative space
    s = re.sub(r"(\\\.|[.,])+$", "", s).strip()  # trailing full stop or comma
    s = _TRAILING_TEXT.sub("", s)               # 5.4 \text{ cents} -> 5.4
    for _ in range(5):                          # \text{(B)} -> (B)
        s = _TEXT.sub(r"\1", s)
    s = _LEAD_IN.sub("", s)                     # Answer: 9, \text{Final answer:} 9
    s = _UNITS.sub("", s.strip()).strip()
    if _THOUSANDS.fullmatch(s):                  # before squeezing: "100, 200" is a list
        s = s.replace(",", "").replace(" ", "")
    s = _squeeze(s)
    s = re.sub(rf"^(?:{_BOUNDED.pattern})\\in(?![a-zA-Z])", "", s)  # x \in [1,2], g(t) \in (2,5) -> the interval
    if top:
        s = _strip_names(s)
    s = _inequality_to_interval(s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)    # multiple choice: (B) -> B
    value = _as_fraction(s)
    return _fmt(value) if value is not None else s


# ----------------------------------------------------------------------------
# A small recursive-descent parser: whitelisted LaTeX -> sympy, never eval.
_TOKEN_RE = re.compile(r"\s*(?:((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(\\[a-zA-Z]+)"
                       r"|([a-zA-Z]_(?:\{[^{}]{1,40}\}|\d+|[a-zA-Z]))|([a-zA-Z])"   # F_{n-1}, a_12, F_k
                       r"|(\*\*|[-+*/^()\[\]{}!_=]))")
_FUNCS = {r"\sin": sympy.sin, r"\cos": sympy.cos, r"\tan": sympy.tan, r"\cot": sympy.cot,
          r"\sec": sympy.sec, r"\csc": sympy.csc, r"\arcsin": sympy.asin,
          r"\arccos": sympy.acos, r"\arctan": sympy.atan, r"\ln": sympy.log,
          r"\log": sympy.log, r"\exp": sympy.exp}
_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta lambda mu nu "
          "xi rho sigma tau phi varphi chi psi omega Gamma Delta Theta Lambda Phi Psi Omega")
_CONSTANTS = {r"\pi": sympy.pi, r"\infty": sympy.oo, "i": sympy.I, "e": sympy.E,
              **{"\\" + g: sympy.Symbol(g) for g in _GREEK.split()}}
_OPEN = {"(": ")", "[": "]", "{": "}"}
# \sum and \prod stay unevaluated: an opaque f(body, index, lower, upper) that sympy
# compares structurally (body is canonical: F_k F_j is F_j F_k) and _sympy_equal
# compares argument by argument; sympy's own Sum would try to evaluate them.
_BIG = {r"\sum": sympy.Function("Sum_"), r"\prod": sympy.Function("Prod_")}
_MAX_DEPTH = 40


def _number(tok: str) -> sympy.Rational:
    if "e" in tok.lower() and abs(int(re.split("[eE]", tok)[1])) > 300:
        raise ValueError("huge scientific exponent")
    value = Fraction(tok)                        # exact: 0.333 is not 1/3
    return sympy.Rational(value.numerator, value.denominator)


_MAX_BITS = 100_000    # largest exact number (numerator or denominator) the parser builds


def _bits(value) -> int:
    return max(abs(value.p).bit_length(), value.q.bit_length())


def _safe_product(a, b, divide=False):
    """a*b or a/b, refusing rationals whose result passes _MAX_BITS: each power is
    bounded by _safe_pow, but 110 of them multiplied (9^{9999} 9^{9999} ...)
    cost seconds of big-integer arithmetic."""
    if a.is_Rational and b.is_Rational and _bits(a) + _bits(b) > _MAX_BITS:
        raise ValueError("result too large")
    return a / b if divide else a * b


def _safe_pow(base, exp):
    """base**exp, refusing results that would take ages to compute (9^{9^{9^9}})."""
    if not exp.free_symbols:
        if abs(complex(exp.evalf(15))) > 10_000:
            raise ValueError("exponent too large")
        if base.is_Rational and abs(base) != 1 and base != 0:
            bits = _bits(base)
            if exp.is_Integer and bits * abs(int(exp)) > _MAX_BITS:
                raise ValueError("result too large")
            if not exp.is_Integer and bits > 700:      # sympy factors the radicand
                raise ValueError("root of a huge number")
    return sympy.Pow(base, exp)


def _safe_root(value, n=2):
    if not (n.is_Integer and 2 <= n <= 100):
        raise ValueError("unsupported root")
    if value.is_Rational and max(abs(value.p), value.q).bit_length() > 700:
        raise ValueError("root of a huge number")      # sympy factors the radicand
    return sympy.root(value, n)


def _tokenize(s: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            if s[pos:].isspace():
                break
            raise ValueError(f"unexpected character {s[pos]!r}")
        tok = m.group(m.lastindex)
        tokens.append("^" if tok == "**" else tok)   # x**2, as in Python
        pos = m.end()
    return tokens


# Grammar of the parser below (EBNF-ish; tokens from _tokenize, "**" reads as "^"):
#
#   expr     = signed { ("+" | "-") signed } ;                    nesting depth + 1
#   signed   = [ "-" | "+" ] term ;                               -2x, +3
#   term     = power { ("*" | "\cdot" | "\times") power
#                    | ("/" | "\div") power
#                    | power } ;                                  implicit product: 2\sqrt{3}, 3x
#   power    = atom { "!" } [ "^" exponent ] ;                    one "^" only: 2^3^4 is refused
#   exponent = [ "-" ] atom ;                                     x^2, x^{n+1}, x^-1
#   atom     = number
#            | "(" expr ")" | "[" expr "]" | "{" expr "}"
#            | "\frac" atom atom                                  \frac{1}{2}, \frac{1}2
#            | "\binom" atom atom
#            | "\sqrt" [ "[" expr "]" ] atom                      \sqrt{2}, \sqrt[3]{x}
#            | bigop | function | constant | subscripted | letter ;
#   bigop    = ("\sum" | "\prod") ( "_" bounds "^" atom | "^" atom "_" bounds ) term ;
#                                                                 nesting depth + 1
#   bounds   = "{" letter "=" expr "}" ;                          \sum_{k=0}^{n-1} F_k F_{n-k-1}
#   function = FUNC [ "^" exponent ] power { power } ;            nesting depth + 1
#   FUNC     = "\sin" | "\cos" | "\tan" | "\cot" | "\sec" | "\csc"
#            | "\arcsin" | "\arccos" | "\arctan" | "\ln" | "\log" | "\exp" ;
#   constant = "\pi" | "\infty" | "i" | "e" | "\alpha" | ... (Greek letters: symbols) ;
#   letter   = any other single ASCII letter (a symbol) ;
#   subscripted = letter "_" ( "{" 1-40 chars without braces "}" | digits | letter ) ;
#              ONE symbol named by its text: F_k, F_{k} are F_k; F_{n-k-1} is not F_{n-1-k}
#   number   = ( digits [ "." [ digits ] ] | "." digits ) [ ("e" | "E") [ "+" | "-" ] digits ] ;
#              exact: 0.333 is not 1/3 (only a decimal of 10+ significant digits
#              is the repeating rational it rounds or truncates: _rounds_to);
#              "12" is one token, so \frac12 must be normalised first
#
# Rules the grammar alone does not say:
#   - an implicit product's factor may start with anything that starts an atom
#     except a written number: "2.5.3", "2^{3}4", "x2", "1 2" are refused as
#     ambiguous. The one exception is a power of a written number after a factor
#     that is not a bare written number: 2^6 3^5 5^4 is 2^6*3^5*5^4 and x 3^2 is
#     9x, but "1 2^3" (12^3?) and "2^6 3" (2^{63}?) stay refused. A \frac with a
#     rational value after a rational value is a mixed number inside an
#     expression ("1\frac{1}{2}+x"): refused too (a lone mixed number was
#     already read by _as_fraction);
#   - a big operator's summand is the term after its bounds (\sum_k a_k b_k + 1
#     adds 1 to the sum); inside it the index letter is that symbol, even "i" or
#     "e". Sums and products are never evaluated (see _BIG);
#   - a function takes more powers as its argument only when no "(" follows it
#     (and its exponent), and never another function: \sin 2x = sin(2x),
#     \sin(2)x = sin(2) x, \sin x \cos x = sin(x) cos(x);
#   - conventions, chosen: a comma separates items, so 1,22 is two numbers and
#     not a decimal comma (a comma before exactly three digits groups
#     thousands: 1,220 is 1220); a percent sign is dropped, so 10\% is 10, not
#     0.1 (MATH writes "10\%" where the model writes 10, and 10\% equal to
#     both 10 and 0.1 would join two classes of one vote);
#   - decimals: written digits are exact, and no decimal is an irrational
#     value however many digits it has (3.14159265358979 is not \pi: a
#     tolerance would call sqrt(10^60+1) and 10^30 equal too). A repeating
#     rational has no exact decimal, so a decimal of DECIMAL_DIGITS (10) or
#     more significant digits is taken as it, rounded half up or truncated at
#     the last digit written: 0.142857142857143 and 0.1428571428 are 1/7;
#     0.142857143 (9 digits) and 0.1428571430 are not. Ten digits is what a
#     calculator shows (0.1 < |x| < 1: no two fractions with denominators
#     below 10^5 share a 10-place decimal); fewer are taken as written;
#   - refused up front (ValueError): nesting deeper than _MAX_DEPTH, n! unless n
#     is an integer in 0..300, \binom{n}{k} unless n in 0..10000 and k an
#     integer, roots of index outside 2..100, results or radicands too large
#     to compute quickly (_safe_pow, _safe_product, _safe_root), scientific
#     exponents past 300.
_STARTS_ATOM = frozenset((*_FUNCS, *_CONSTANTS, *_BIG, "(", "{", r"\frac", r"\sqrt", r"\binom"))
_TIMES = ("*", r"\cdot", r"\times")
_DIVIDE = ("/", r"\div")


def _starts_atom(tok: str) -> bool:
    return tok[0].isalnum() or tok[0] == "." or tok in _STARTS_ATOM


def _is_number(tok: str) -> bool:
    return tok[0].isdigit() or tok[0] == "."


def _binomial(n, k):
    if not (n.is_Integer and k.is_Integer and 0 <= n <= 10_000):
        raise ValueError("unsupported binomial")
    return sympy.binomial(n, k)


def _factorial(n):
    if not (n.is_Integer and 0 <= n <= 300):
        raise ValueError("unsupported factorial")
    return sympy.factorial(n)


class _Parser:
    """Recursive descent over a token list, one method per grammar rule.

    \\frac, \\binom, \\sqrt and a function's exponent are read inside atom, so
    the chains that the depth limit does not bound (\\frac\\frac..., \\ln^\\ln^...)
    recurse through as few Python frames per link as before: overlong input
    hits RecursionError (caught by _parse) at the same length.
    """

    def __init__(self, tokens: list[str]):
        self.toks, self.pos, self.depth = tokens, 0, 0
        self.bound: dict[str, sympy.Symbol] = {}   # index letters of the \sum being read

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"expected {expected!r}, got {tok!r}")
        self.pos += 1
        return tok

    def accept(self, tok: str) -> bool:
        """Take the next token if it is `tok`."""
        if self.peek() != tok:
            return False
        self.pos += 1
        return True

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")

    def expr(self):
        self.nest()
        value = self.signed()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = value + self.signed() if op == "+" else value - self.signed()
        self.depth -= 1
        return value

    def signed(self):
        if self.accept("-"):
            return -self.term()
        self.accept("+")
        return self.term()

    def term(self):
        start = self.pos
        value = self.power()
        while (tok := self.peek()) is not None:
            bare = self.pos == start + 1 and _is_number(self.toks[start])   # last factor: "2", not 2^6
            if tok in _TIMES or tok in _DIVIDE:
                self.take()
                start = self.pos
                value = _safe_product(value, self.power(), divide=tok in _DIVIDE)
            elif _starts_atom(tok):              # implicit product: 2\sqrt{3}, 3x
                # ...but never of two written numbers ("2.5.3", "2^{3}4", "x2") nor of a
                # number and a numeric fraction (1\frac{1}{2} is a mixed number): ambiguous.
                # 2^6 3^5 is a product: a number's power after a factor that is no bare number.
                if _is_number(tok) and (bare or self.toks[self.pos + 1:self.pos + 2] != ["^"]):
                    raise ValueError("two numbers side by side")
                start = self.pos
                factor = self.power()
                if tok == r"\frac" and factor.is_Rational and value.is_Rational:
                    raise ValueError("mixed number inside an expression")
                value = _safe_product(value, factor)
            else:
                break
        return value

    def power(self):
        base = self.atom()
        while self.accept("!"):
            base = _factorial(base)
        if self.accept("^"):
            base = _safe_pow(base, self.exponent())
        return base

    def exponent(self):
        if self.accept("-"):
            return -self.atom()
        return self.atom()

    def atom(self):
        """Also the argument of \\frac, \\sqrt, \\binom: a {group} or one token."""
        tok = self.take()
        if _is_number(tok):
            return _number(tok)
        if tok in _OPEN:
            value = self.expr()
            self.take(_OPEN[tok])
            return value
        if tok == r"\frac":
            num = self.atom()
            return num / self.atom()
        if tok == r"\binom":
            n = self.atom()
            return _binomial(n, self.atom())
        if tok == r"\sqrt":
            n = self.root_index()
            return _safe_root(self.atom(), n)
        if tok in _FUNCS:                        # \sin x, \sin(x), \sin^2 x
            p = self.exponent() if self.accept("^") else None
            return self.function(tok, p)
        if tok in _BIG:
            return self.big_operator(tok)
        if tok in self.bound:
            return self.bound[tok]
        if tok in _CONSTANTS:
            return _CONSTANTS[tok]
        if len(tok) == 1 and tok.isalpha():
            return sympy.Symbol(tok)
        if tok[1:2] == "_":                      # F_{n-k-1}: one symbol, named by its text
            return sympy.Symbol(tok[:2] + tok[2:].removeprefix("{").removesuffix("}"))
        raise ValueError(f"unsupported token {tok!r}")

    def root_index(self):
        """The n of \\sqrt[n]{...}; 2 without brackets."""
        if not self.accept("["):
            return sympy.Integer(2)
        n = self.expr()
        self.take("]")
        return n

    def big_operator(self, name: str):
        """\\sum_{k=lo}^{hi} body (either order of bounds) -> _BIG[name](body, k, lo, hi)."""
        self.nest()
        index = lower = upper = None
        for _ in range(2):
            if upper is None and self.accept("^"):
                upper = self.atom()
            elif index is None and self.accept("_"):
                self.take("{")
                index = self.take()
                if not (len(index) == 1 and index.isalpha()):
                    raise ValueError("a sum's index must be a letter")
                self.take("=")
                lower = self.expr()
                self.take("}")
        if index is None or upper is None:
            raise ValueError("a sum needs its index and both bounds")
        outer, self.bound = self.bound, {**self.bound, index: sympy.Symbol(index)}
        body = self.term()
        self.bound = outer
        self.depth -= 1
        return _BIG[name](body, sympy.Symbol(index), lower, upper)

    def function(self, name: str, p):
        """name(argument) ** p; the argument is the power(s) after the name."""
        self.nest()
        # \sin 2x is sin(2x), but \sin x \cos x is sin(x) cos(x)
        parenthesised = self.peek() == "("
        argument = self.power()
        while (not parenthesised and (tok := self.peek()) is not None and _starts_atom(tok)
               and tok not in _FUNCS):
            argument = _safe_product(argument, self.power())
        value = _FUNCS[name](argument)
        self.depth -= 1
        return _safe_pow(value, p) if p is not None else value


def _to_sympy(s: str):
    """Parse a whitelisted LaTeX expression into a sympy expression (or raise)."""
    parser = _Parser(_tokenize(s))
    value = parser.expr()
    if parser.pos != len(parser.toks):
        raise ValueError("trailing tokens")
    return value


@functools.lru_cache(maxsize=1 << 12)
def _parse(s: str):
    """Cached parse; None when s is not a (safe) expression."""
    if len(s) > MAX_SYMBOLIC_LEN:
        return None
    try:
        return _to_sympy(s)
    except (ValueError, TypeError, ZeroDivisionError, ArithmeticError, RecursionError):
        return None


# ----------------------------------------------------------------------------
# Comparing sympy values
_BAD = (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo)
_MAXN = 300      # digits of working precision sympy may use to tell a difference from 0


def _value(expr, point):
    v = expr.evalf(40, subs=point) if point else expr.evalf(40)
    if not v.is_number or v.has(*_BAD):
        return None
    return v


def _near(u, v) -> bool:
    return bool(abs(u - v) <= sympy.Float("1e-25", 40) * max(abs(u), abs(v)))


def _points(symbols, n=3):
    # Fixed pseudo-random points (deterministic). One has negative coordinates
    # so that e.g. sqrt(x^2) and x are told apart.
    rng = random.Random(20250521)
    return [{s: sympy.Float(rng.uniform(0.3, 1.7) * (-1 if k == n - 1 else 1), 40)
             for s in symbols} for k in range(n)]


def _is_zero(diff, point) -> bool:
    """Is diff exactly 0 at the point? sympy's evalf raises its working precision
    (up to _MAXN digits) until the 40 digits asked for are right, so a nonzero
    difference, however tiny (sqrt(10^60+1) - 10^30 = 5e-31, or pi minus 35 of
    its digits), comes back with correct digits; only a zero (or a difference
    below ~10^-_MAXN relative to the terms) comes back with none ("0.e-1550").
    A fixed tolerance would call such pairs equal."""
    d = diff.evalf(40, subs=point, maxn=_MAXN) if point else diff.evalf(40, maxn=_MAXN)
    return all(part == 0 or (part.is_Float and part._prec < 10)    # _prec: correct bits
               for part in d.as_real_imag())


def _sympy_equal(a, b) -> bool:
    if a == b:
        return True
    if a.func in _BIG.values() or b.func in _BIG.values():
        # Two sums (products) are equal if body, index and bounds are: body as a
        # function of every real index, which is more than equal on the integers.
        # A sum inside a larger expression is only compared structurally (above).
        return a.func == b.func and all(_sympy_equal(x, y) for x, y in zip(a.args, b.args))
    if a.has(*_BAD) or b.has(*_BAD):             # infinities: only structurally equal
        return False
    if a.is_Rational and b.is_Rational:           # exact: a != b, unless one is the other's long decimal
        fa, fb = Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q))
        return _decimal_equal(fa, fb)
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if len(symbols) > 8:
        return False
    diff, checked = a - b, 0
    for point in _points(symbols) if symbols else [None]:
        if _value(a, point) is None or _value(b, point) is None:
            continue                              # outside the domain: try another point
        if not _is_zero(diff, point):
            return False
        checked += 1
    return checked >= (2 if symbols else 1)


def _ratio(da, db):
    """c if da = c db for a constant c != 0 (exactly, or at all the fixed points
    where both are defined, at least two), else None."""
    if da == db:
        return sympy.Integer(1)
    if da == -db:
        return sympy.Integer(-1)
    symbols = sorted(da.free_symbols | db.free_symbols, key=str)
    if not symbols or len(symbols) > 8 or da.has(*_BAD) or db.has(*_BAD):
        return None
    ratios = []
    for point in _points(symbols):
        u, v = _value(da, point), _value(db, point)
        if u is not None and v is not None and v != 0:
            ratios.append(u / v)
    if len(ratios) >= 2 and ratios[0] != 0 and all(_near(r, ratios[0]) for r in ratios[1:]):
        return ratios[0]
    return None


def _equations_equal(a: str, b: str) -> bool:
    """L1 = R1 vs L2 = R2: same equation if L1-R1 = c (L2-R2) for a constant c != 0.
    Both left sides count: \\cos x = a is not \\sin x = a."""
    sides = [_parse(x) for x in _split_top(a, "=") + _split_top(b, "=")]
    if any(x is None for x in sides):
        return False
    return _ratio(sides[0] - sides[1], sides[2] - sides[3]) is not None


_REL_RE = re.compile(r"(<|>|\\(?:le|ge|neq)(?![a-zA-Z]))")   # the spellings _normalize leaves
_FLIP = {">": "<", r"\ge": r"\le"}


def _relation(lhs: str, op: str, rhs: str):
    """L op R -> (op, D) meaning D > 0 ("<"), D >= 0 ("\\le") or D != 0 ("\\neq"):
    one direction, so -x > -1 and x < 1 both read 1 - x > 0. None if unparseable."""
    left, right = _parse(lhs), _parse(rhs)
    if left is None or right is None:
        return None
    if op in _FLIP:
        left, right, op = right, left, _FLIP[op]
    return op, right - left


def _relations_equal(ra, rb) -> bool:
    """Same relation if D1 = c D2 with c > 0 (any c != 0 for \\neq); with no
    variable at all, 1 < 2 and 3 < 4 are not one answer."""
    if ra is None or rb is None or ra[0] != rb[0]:
        return False
    if not (ra[1].free_symbols or rb[1].free_symbols):
        return False
    c = _ratio(ra[1], rb[1])
    return c is not None and (ra[0] == r"\neq" or bool(c.is_positive))


def _relation_vs_interval(rel: list[str], interval) -> bool:
    """-x > -1 vs (-\\infty,1), which is what x < 1 was normalised to: the
    interval read as a relation in the relation's only variable."""
    ra = _relation(*rel)
    (opening, closing, items) = interval
    if ra is None or len(items) != 2 or len(ra[1].free_symbols) != 1:
        return False
    v = next(iter(ra[1].free_symbols))
    lo, hi = (x.strip() for x in items)
    if lo == r"-\infty" and hi not in (r"\infty", r"+\infty"):
        bound, strict, d = _parse(hi), closing == ")", lambda b: b - v
    elif hi in (r"\infty", r"+\infty") and lo != r"-\infty":
        bound, strict, d = _parse(lo), opening == "(", lambda b: v - b
    else:
        return False
    if bound is None or bound.free_symbols or bound.has(*_BAD):
        return False
    return _relations_equal(ra, ("<" if strict else r"\le", d(bound)))


def _is_text(s: str) -> bool:
    # Words ("Monday", "even") must not be parsed as products of variables.
    return (s.isalpha() and len(s) > 1) or re.search(
        r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", "", s)) is not None


def _scalar_equal(a: str, b: str) -> bool:
    if _is_text(a) or _is_text(b):
        return a.lower() == b.lower()
    if len(_INEQ_RE.split(a)) > 1 or len(_INEQ_RE.split(b)) > 1:
        return False                              # unconverted inequalities: strings only
    ea, eb = _parse(a), _parse(b)
    return ea is not None and eb is not None and _sympy_equal(ea, eb)


# ----------------------------------------------------------------------------
# Structured answers
_MATRIX_RE = re.compile(r"\\begin\{([pbBvV]?matrix)\}(.*)\\end\{\1\}", re.S)


def _split_top(s: str, sep: str) -> list[str]:
    """Split on sep where not nested inside any bracket."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _wrapped(s: str) -> bool:
    """Does the first bracket of s close at its very last character?"""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_PM_RE = re.compile(r"\\(?:pm|mp)(?![a-zA-Z])")


def _expand_pm(items: list[str]) -> list[str]:
    """1 \\pm \\sqrt{2} stands for two answers."""
    out = []
    for item in items:
        signs = _PM_RE.findall(item)
        if len(signs) == 1:
            first, second = ("+", "-") if signs[0] == r"\pm" else ("-", "+")
            out += [_PM_RE.sub(sign, item) for sign in (first, second)]
        else:
            out.append(item)
    return out


def _shape(s: str):
    """(kind, payload): matrix, set (unordered), tuple (ordered, with brackets),
    rel ([lhs, op, rhs]), eq, scalar."""
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [r.split("&") for r in m.group(2).split("\\\\") if r.strip()]
        return "matrix", rows
    if s.startswith("\\{") and s.endswith("\\}") and _wrapped(s):
        return "set", _expand_pm(_split_top(s[2:-2], ","))
    if s.startswith("{") and _wrapped(s):        # {1,2}: a set written without backslashes
        return "set", _expand_pm(_split_top(s[1:-1], ","))
    for sep in ("\\cup", ","):
        parts = _split_top(s, sep)
        if len(parts) > 1:
            return "set", _expand_pm(parts)
    if s[:1] in "([" and s[-1:] in ")]" and _wrapped(s):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return "tuple", (s[0], s[-1], items)
    if len(_PM_RE.findall(s)) == 1:
        return "set", _expand_pm([s])
    rel = _REL_RE.split(s)
    if len(rel) == 3 and rel[0] and rel[2]:       # one relation; chains stay scalar (refused)
        return "rel", rel
    if len(_split_top(s, "=")) == 2:
        return "eq", s
    return "scalar", s


def _match_unordered(xs: list[str], ys: list[str]) -> bool:
    if len(xs) != len(ys):
        return False
    unused = list(ys)
    for x in xs:
        hit = next((y for y in unused if _equiv_norm(x, y)), None)
        if hit is None:
            return False
        unused.remove(hit)
    return True


def _equiv_norm(a: str, b: str) -> bool:
    """Equivalence of two normalised answers (symmetric, cached)."""
    if a == b:
        return True
    if not a or not b or len(a) > MAX_STRUCT_LEN or len(b) > MAX_STRUCT_LEN:
        return False
    try:
        return _equiv_cached(min(a, b), max(a, b))
    except Exception:        # e.g. RecursionError on absurdly nested tuples
        return False


def _assigned_tuples(items: list[str]) -> str | None:
    """m=3,n=1,m=5,n=1 -> (3,1),(5,1): assignments whose names repeat in one order are tuples in the order
    written (n=1,m=3 is (1,3)); None for any other list."""
    pairs = [_split_top(x.strip(), "=") for x in items]
    if len(pairs) < 2 or any(len(p) != 2 or not _LABEL_RE.fullmatch(p[0]) or _has_letters(p[1]) for p in pairs):
        return None
    names = [p[0] for p in pairs]
    k = names.index(names[0], 1) if names[0] in names[1:] else len(names)
    if k < 2 or names != names[:k] * (len(names) // k) or len(set(names[:k])) != k:
        return None
    return ",".join("(" + ",".join(p[1] for p in pairs[i:i + k]) + ")" for i in range(0, len(pairs), k))


def _tuples(kind: str, payload) -> bool:
    """Is this shape a tuple, or a list of tuples?"""
    return kind == "tuple" and payload[0] == "(" or kind == "set" and all(
        x.strip()[:1] == "(" and _wrapped(x.strip()) and "," in x for x in payload)


@functools.lru_cache(maxsize=1 << 15)
def _equiv_cached(a: str, b: str) -> bool:
    (ka, pa), (kb, pb) = _shape(a), _shape(b)
    for (k1, p1), (k2, p2), other in (((ka, pa), (kb, pb), b), ((kb, pb), (ka, pa), a)):
        tuples = _assigned_tuples(p1) if k1 == "set" and _tuples(k2, p2) else None
        if tuples is not None:                    # m=3,n=1 vs (3,1)
            return _equiv_norm(tuples, other)
    norm = lambda items: [_normalize(x.strip(), top=False) for x in items[:MAX_ITEMS + 1]]
    if ka != kb:      # a one-element set {5} equals its element 5
        if ka == "set" and len(pa) == 1:
            return _equiv_norm(normalize_answer(pa[0]), b)
        if kb == "set" and len(pb) == 1:
            return _equiv_norm(a, normalize_answer(pb[0]))
        if "eq" in (ka, kb):   # y = 2x+3 vs 2x+3, AB/CD = 2 vs 2: a name on the left is only a label
            eq, other = (a, b) if ka == "eq" else (b, a)
            lhs, rhs = _split_top(eq, "=")
            label = _LHS_RE.fullmatch(lhs) or (_QUANTITY_RE.fullmatch(lhs) and not _has_letters(rhs))
            return bool(label) and _equiv_norm(normalize_answer(rhs), other)
        if {ka, kb} == {"rel", "tuple"}:     # -x > -1 vs (-\infty,1)
            return _relation_vs_interval(*((pa, pb) if ka == "rel" else (pb, pa)))
        return False
    if ka == "set":
        return len(pa) <= MAX_ITEMS and _match_unordered(norm(pa), norm(pb))
    if ka == "tuple":   # (1,2] vs (1,2): brackets matter
        (oa, ca, xs), (ob, cb, ys) = pa, pb
        return (oa, ca) == (ob, cb) and len(xs) == len(ys) <= MAX_ITEMS and all(
            _equiv_norm(x, y) for x, y in zip(norm(xs), norm(ys)))
    if ka == "matrix":
        return ([len(r) for r in pa] == [len(r) for r in pb]
                and len(pa) <= MAX_ITEMS and all(len(r) <= MAX_ITEMS for r in pa)
                and all(_equiv_norm(x, y) for ra, rb in zip(pa, pb)
                        for x, y in zip(norm(ra), norm(rb))))
    if ka == "eq":
        return _equations_equal(a, b)
    if ka == "rel":
        return _relations_equal(_relation(*pa), _relation(*pb))
    return _scalar_equal(a, b)


# ----------------------------------------------------------------------------
# The hard time cap. Everything above that needs sympy runs in a worker process
# (`python grader.py --serve`, JSON lines over pipes) that is killed when a
# comparison overruns, and started again on the next one. Unlike a SIGALRM
# timer this works from any thread and stops even C code; the size bounds in
# the parser keep overruns rare. The parent keeps the fast paths: equal
# normalised strings, and two plain numbers (canonical, so equal iff identical).
_idle: list[subprocess.Popen] = []      # started workers waiting for work
_idle_lock = threading.Lock()
_verdicts: dict[tuple[str, str], bool] = {}
_fallback_warned = False


def _start_worker() -> subprocess.Popen:
    """A fresh worker (~1 s: it imports sympy). OSError if none can be started here,
    TimeoutError (an OSError too) if it does not come up."""
    if not sys.executable:
        raise OSError("no Python executable to start a worker with")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
    if not select.select([proc.stdout], [], [], 30)[0] or proc.stdout.readline() != "ready\n":
        _kill(proc)
        raise TimeoutError("the grader worker did not start")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        try:
            pipe.close()
        except OSError:                  # unflushed input to a dead process
            pass


def _in_worker(a: str, b: str, seconds: float) -> bool:
    """_equiv_norm(a, b) in a worker process; TimeoutError after `seconds`."""
    with _idle_lock:
        proc = _idle.pop() if _idle else None
    if proc is not None and proc.poll() is not None:   # it died while idle (OOM killer...)
        _kill(proc)
        proc = None
    proc = proc or _start_worker()
    try:
        proc.stdin.write(json.dumps([a, b, seconds]) + "\n")
        proc.stdin.flush()
        done = select.select([proc.stdout], [], [], seconds)[0]
        reply = proc.stdout.readline() if done else "took too long"
    except OSError:                                  # a broken pipe: it died
        reply = ""
    except BaseException:                            # e.g. KeyboardInterrupt: don't leave it running
        _kill(proc)
        raise
    if reply not in ("0\n", "1\n"):                # overran, or died (e.g. by its own alarm)
        _kill(proc)
        raise TimeoutError(f"grader worker: {reply or 'died'}")
    with _idle_lock:
        _idle.append(proc)
    return reply == "1\n"


@atexit.register
def _stop_workers() -> None:
    with _idle_lock:
        while _idle:
            _kill(_idle.pop())


def _forget_workers() -> None:
    global _idle_lock                    # a forked child must not use its parent's workers
    _idle_lock = threading.Lock()
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _serve() -> None:
    """The worker's loop: one [a, b, seconds] request per line, "1"/"0" back."""
    print("ready", flush=True)
    for line in sys.stdin:
        a, b, seconds = json.loads(line)
        # Backstop: if the parent could not kill us, SIGALRM's default action does.
        signal.setitimer(signal.ITIMER_REAL, seconds + 5)
        verdict = _equiv_norm(a, b)
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(int(verdict), flush=True)


def _equal(a: str, b: str, deadline: float) -> bool:
    """Equivalence of two normalised answers, giving up (False) at `deadline`."""
    global _fallback_warned
    if a == b:
        return True
    if not a or not b or len(a) > MAX_STRUCT_LEN or len(b) > MAX_STRUCT_LEN:
        return False
    fa, fb = _as_fraction(a), _as_fraction(b)
    if fa is not None and fb is not None:          # distinct canonical numbers: one may be the other's
        return _decimal_equal(fa, fb)    # long decimal
    key = (min(a, b), max(a, b))
    if key not in _verdicts:
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            return False
        try:
            verdict = _in_worker(*key, seconds)
        except TimeoutError:                       # no verdict -> differ (not cached:
            return False                           # it may have been the machine's load)
        except OSError:                            # no subprocesses here: compare in-process,
            if not _fallback_warned:               # bounded by the parser's size limits only
                _fallback_warned = True
                print("grader: no worker process; comparing without a time cap",
                      file=sys.stderr)
            verdict = _equiv_norm(*key)
        if len(_verdicts) > 1 << 16:
            _verdicts.clear()
        _verdicts[key] = verdict
    return _verdicts[key]


# ----------------------------------------------------------------------------
# Public API
def is_equiv(a: str, b: str) -> bool:
    """Are two answer strings mathematically the same? Never raises."""
    try:
        na, nb = normalize_answer(a), normalize_answer(b)
        return bool(na) and bool(nb) and _equal(na, nb, time.monotonic() + TIME_LIMIT_S)
    except Exception:       # RecursionError, MemoryError-free pathological input...
        return False


def vote_classes(answers: list[str | None]) -> list[int | None]:
    """Class id per answer (equal ids = equivalent answers; None for no answer).

    Answers are grouped by normalised string first, so sympy only ever sees
    each distinct form once; a new form joins the first class whose first
    member it is equivalent to. Ids are numbered in order of first appearance.
    """
    deadline = time.monotonic() + TIME_LIMIT_S    # one cap for the whole group
    ids: list[int | None] = []
    by_norm: dict[str, int] = {}
    reps: list[str] = []            # normalised first member of each class
    for ans in answers:
        try:
            norm = normalize_answer(ans) if isinstance(ans, str) else ""
        except Exception:
            norm = ""
        if not norm:
            ids.append(None)
            continue
        if norm not in by_norm:
            cid = next((i for i, rep in enumerate(reps) if _equal(norm, rep, deadline)), None)
            if cid is None:
                cid = len(reps)
                reps.append(norm)
            by_norm[norm] = cid
        ids.append(by_norm[norm])
    return ids


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
