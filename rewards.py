r"""Answer extraction, answer equivalence and the SRT self-consistency reward.

SRT (Self-Rewarded Training, arXiv 2505.21444) has no labels: a response gets
reward 1.0 when its final answer (the last \boxed{}) is equivalent to the
majority-voted answer of the group of samples drawn for the same prompt.

Equivalence is checked in layers, cheapest first:
  1. normalise the LaTeX string (spacing, \left/\right, units, \dfrac, 1,000,
     x = 5 -> 5, plain numbers -> canonical fraction) and compare strings;
  2. split structured answers (tuples, intervals, sets, unordered solution
     lists, \pm, matrices, equations) and compare their parts recursively;
  3. parse what is left with our own small LaTeX parser straight into sympy
     objects and test whether their difference is exactly zero (rationals
     exactly; otherwise numerically, with sympy raising the precision up to
     300 digits, at a few fixed random points when there are variables).
Answers are model output, i.e. hostile: nothing here calls eval/exec/sympify
on them; the parser only knows a whitelist of tokens, and it refuses huge
exponents, factorials, roots and nesting up front so sympy stays fast. Layer 2
and 3 run in a worker process that is killed when one public call's symbolic
work passes TIME_LIMIT_S, from any thread (see _equal).
A false positive is worse than a false negative: when unsure, answers differ.
Nothing here raises: every input gets a verdict.
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

__all__ = ["extract_answer", "normalize_answer", "is_equiv", "grade", "bench_grader",
           "vote_classes", "majority_vote", "self_rewards"]

MAX_SYMBOLIC_LEN = 1000   # longer answers are only compared as strings
MAX_STRUCT_LEN = 3000     # longer answers are not split into tuples/sets
MAX_ITEMS = 32            # longest tuple/set/matrix we compare element-wise
TIME_LIMIT_S = 3.0        # hard cap on the symbolic work of one public call (any thread)

# ----------------------------------------------------------------------------
# Extraction
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)   # "\{" is an escaped brace, not a group


def extract_answer(text: str) -> str | None:
    r"""Content of the last \boxed{...} / \fbox{...} (or "\boxed 5"), else None.

    Empty or unterminated boxes give None, so they never form a voting class.
    """
    if not isinstance(text, str):
        return None
    last = None
    for last in _BOX_RE.finditer(text):   # linear; keeps the last match
        pass
    if last is None:
        return None
    start = last.end()
    j = start
    while j < len(text) and text[j].isspace():
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        for m in _BRACE_RE.finditer(text, j):
            if m.group() == "{":
                depth += 1
            elif m.group() == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1:m.start()].strip() or None
        return None                        # unbalanced: no answer
    if j > start:                          # "\boxed 5": a single token
        m = re.match(r"[^\s$]+", text[j:j + 1000])
        return m.group() if m else None
    return None


# ----------------------------------------------------------------------------
# Normalisation: strings that mean the same thing should become identical,
# so that most equal answers merge without touching sympy.
_UNICODE = str.maketrans({"−": "-", "–": "-", "×": r"\times ", "·": r"\cdot ",
                          "÷": r"\div ", "π": r"\pi ", "∞": r"\infty ", "√": r"\sqrt ",
                          "≤": r"\le ", "≥": r"\ge ", "±": r"\pm ", "∪": r"\cup ",
                          "°": "", "θ": r"\theta ",
                          # LaTeX that went through a non-raw Python string: "\frac" -> form feed + "rac"
                          "\f": r"\f", "\a": r"\a", "\b": r"\b", "\v": r"\v"})
_SIMPLE_SUBS = [(re.compile(p), r) for p, r in [
    (r"\\\$|\$", ""),
    (r"[\t\r](?=[a-z]{2})", lambda m: "\\" + "tr"[m.group() == "\r"]),   # "\text" as tab + "ext"
    (r"(?<!\\)\\\\(?=(?:[dtc]?frac|sqrt|pi|text|cdot|times|left|right|infty|pm)(?![a-zA-Z]))",
     r"\\"),                                               # over-escaped "\\\\sqrt"
    (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"),
    (r"(?<!\\);", ","),                                     # (0;-2;6): semicolons separate items
    (r"\\(?:left|right)(?![a-zA-Z])\.?", ""),              # \left( -> (, \right. -> ""
    (r"\\(?:displaystyle|textstyle)(?![a-zA-Z])", ""),
    (r"(\d),\\!\s*(?=\d)", r"\1,"),                          # 10,\!080 -> 10,080
    (r"\s*\{\s*,\s*\}\s*", ","),                                  # 14{,}916, 14 {, }916
    (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),
    (r"\\(?:mbox|textbf|textit|textrm|textup|textnormal|mathrm|mathbf|mathit|mathsf"
     r"|operatorname)(?![a-zA-Z])", r"\\text"),
    (r",?\s*\\text\s*\{\s*(?:or|and)\s*\}\s*", ","),          # x=1 \text{ or } x=2; 19, 46, \text{ and } 82
    (r"(?<=[\d})\]])\s*,?\s*\b(?:or|and)\s+(?=\S)", ","),        # 6 and 8, (7,11) or (11,7)
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
# What may stand left of "=" as a mere name: x, a_3, f(x), |AB|, \theta, (p,q).
_NAME = r"(?:[a-zA-Z]{1,3}|\\[a-zA-Z]+)(?:_\w+)?"
_LHS_RE = re.compile(rf"\|?{_NAME}(?:\([a-zA-Z]\))?\|?|\((?:{_NAME},)+{_NAME}\)")


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


def _has_letters(s: str) -> bool:
    return re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s)) is not None


def _inequality_to_interval(s: str) -> str:
    """x > 3 -> (3,\\infty); 1 <= x < 2 -> [1,2). Anything else unchanged."""
    parts = [p.strip() for p in _INEQ_RE.split(s)]
    less = lambda op: op[0] == "<" or op.startswith(r"\l")
    closed = lambda op: op not in ("<", ">")
    is_var = lambda t: re.fullmatch(r"[a-zA-Z]", t) is not None
    if len(parts) == 3:
        lhs, op, rhs = parts
        if is_var(rhs) and not is_var(lhs):      # 3 < x  ->  x > 3
            lhs, rhs, op = rhs, lhs, (">" if less(op) else "<") + ("=" if closed(op) else "")
        if not is_var(lhs) or not rhs or _has_letters(rhs):
            return s
        if less(op):
            return "(-\\infty," + rhs + ("]" if closed(op) else ")")
        return ("[" if closed(op) else "(") + rhs + ",\\infty)"
    if len(parts) == 5 and is_var(parts[2]) and less(parts[1]) and less(parts[3]):
        lo, hi = parts[0], parts[4]
        if lo and hi and not _has_letters(lo) and not _has_letters(hi):
            return ("[" if closed(parts[1]) else "(") + lo + "," + hi + ("]" if closed(parts[3]) else ")")
    return s


def normalize_answer(ans: str) -> str:
    """Canonical string form of an answer ('' for no/unusable answer)."""
    if not isinstance(ans, str):
        return ""
    s = ans.strip()
    if len(s) > MAX_STRUCT_LEN:    # too long to be a real answer: compare raw, don't cache
        return s
    return _normalize(s)


def _strip_names(s: str) -> str:
    """x = 5 -> 5; x = 1, x = 2 -> 1,2; n = 1, 2 -> 1,2; x = 5+6 = 11 -> 11.

    A name is only a label when the right side is a value (y = 2x+3 stays an
    equation) and names the whole answer: x = 1, y = 2 keeps its names, which
    tell its values apart (so its items are normalised with top=False).
    """
    items = [_split_top(item, "=") for item in _split_top(s, ",")]
    for parts in items:
        if len(parts) > 2 and _LHS_RE.fullmatch(parts[0]):
            del parts[1:-1]                      # x = 5+6 = 11 -> x = 11
    named = [len(p) == 2 and bool(_LHS_RE.fullmatch(p[0])) and not _has_letters(p[1]) for p in items]
    if (all(named) and len({p[0] for p in items}) == 1) or (named[0] and all(len(p) == 1 for p in items[1:])):
        items = [p[1:] if n else p for p, n in zip(items, named)]
    return ",".join("=".join(p) for p in items)


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
    s = _UNITS.sub("", s.strip()).strip()
    if _THOUSANDS.fullmatch(s):                  # before squeezing: "100, 200" is a list
        s = s.replace(",", "").replace(" ", "")
    s = _squeeze(s)
    s = re.sub(r"^[a-zA-Z]\\in(?![a-zA-Z])", "", s)  # x \in [1,2] -> [1,2]
    if top:
        s = _strip_names(s)
    s = _inequality_to_interval(s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)    # multiple choice: (B) -> B
    value = _as_fraction(s)
    return _fmt(value) if value is not None else s


# ----------------------------------------------------------------------------
# A small recursive-descent parser: whitelisted LaTeX -> sympy, never eval.
_TOKEN_RE = re.compile(r"\s*(?:((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(\\[a-zA-Z]+)|([a-zA-Z])"
                       r"|(\*\*|[-+*/^()\[\]{}!]))")
_FUNCS = {r"\sin": sympy.sin, r"\cos": sympy.cos, r"\tan": sympy.tan, r"\cot": sympy.cot,
          r"\sec": sympy.sec, r"\csc": sympy.csc, r"\arcsin": sympy.asin,
          r"\arccos": sympy.acos, r"\arctan": sympy.atan, r"\ln": sympy.log,
          r"\log": sympy.log, r"\exp": sympy.exp}
_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta lambda mu nu "
          "xi rho sigma tau phi varphi chi psi omega Gamma Delta Theta Lambda Phi Psi Omega")
_CONSTANTS = {r"\pi": sympy.pi, r"\infty": sympy.oo, "i": sympy.I, "e": sympy.E,
              **{"\\" + g: sympy.Symbol(g) for g in _GREEK.split()}}
_OPEN = {"(": ")", "[": "]", "{": "}"}
_MAX_DEPTH = 40


def _number(tok: str) -> sympy.Rational:
    if "e" in tok.lower() and abs(int(re.split("[eE]", tok)[1])) > 300:
        raise ValueError("huge scientific exponent")
    value = Fraction(tok)                        # exact: 0.333 is not 1/3
    return sympy.Rational(value.numerator, value.denominator)


def _safe_pow(base, exp):
    """base**exp, refusing results that would take ages to compute (9^{9^{9^9}})."""
    if not exp.free_symbols:
        if abs(complex(exp.evalf(15))) > 10_000:
            raise ValueError("exponent too large")
        if base.is_Rational and abs(base) != 1 and base != 0:
            bits = max(abs(base.p).bit_length(), base.q.bit_length())
            if exp.is_Integer and bits * abs(int(exp)) > 100_000:
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


def _to_sympy(s: str):
    """Parse a whitelisted LaTeX expression into a sympy expression (or raise)."""
    toks = _tokenize(s)
    pos, depth = 0, 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"expected {expected!r}, got {tok!r}")
        pos += 1
        return tok

    def starts_atom(tok):
        return (tok[0].isalnum() or tok[0] == "." or tok in ("(", "{")
                or tok in _FUNCS or tok in _CONSTANTS or tok in (r"\frac", r"\sqrt", r"\binom"))

    def expr():
        nonlocal depth
        depth += 1
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        value = signed()
        while peek() in ("+", "-"):
            op = take()
            value = value + signed() if op == "+" else value - signed()
        depth -= 1
        return value

    def signed():   # a product, optionally preceded by a sign: -2x, +3
        if peek() == "-":
            take()
            return -term()
        if peek() == "+":
            take()
        return term()

    def term():
        value = power()
        while peek() is not None:
            tok = peek()
            if tok in ("*", r"\cdot", r"\times"):
                take()
                value = value * power()
            elif tok in ("/", r"\div"):
                take()
                value = value / power()
            elif starts_atom(tok):               # implicit product: 2\sqrt{3}, 3x
                # ...but never of two written numbers ("2.5.3", "2^{3}4", "x2") nor of a
                # number and a numeric fraction (1\frac{1}{2} is a mixed number): ambiguous.
                if tok[0].isdigit() or tok[0] == ".":
                    raise ValueError("two numbers side by side")
                factor = power()
                if tok == r"\frac" and factor.is_Rational and value.is_Rational:
                    raise ValueError("mixed number inside an expression")
                value = value * factor
            else:
                break
        return value

    def exponent():   # x^2, x^{n+1}, x^-1
        if peek() == "-":
            take()
            return -atom()
        return atom()

    def power():
        base = atom()
        while peek() == "!":
            take()
            if not (base.is_Integer and 0 <= base <= 300):
                raise ValueError("unsupported factorial")
            base = sympy.factorial(base)
        if peek() == "^":
            take()
            base = _safe_pow(base, exponent())
        return base

    def atom():   # also the argument of \frac, \sqrt, \binom: {group} or one token
        nonlocal depth
        tok = take()
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        if tok in _OPEN:
            value = expr()
            take(_OPEN[tok])
            return value
        if tok == r"\frac":
            num = atom()
            return num / atom()
        if tok == r"\binom":
            n, k = atom(), atom()
            if not (n.is_Integer and k.is_Integer and 0 <= n <= 10_000):
                raise ValueError("unsupported binomial")
            return sympy.binomial(n, k)
        if tok == r"\sqrt":
            n = sympy.Integer(2)
            if peek() == "[":
                take()
                n = expr()
                take("]")
            return _safe_root(atom(), n)
        if tok in _FUNCS:   # \sin x, \sin(x), \sin^2 x
            p = None
            if peek() == "^":
                take()
                p = exponent()
            depth += 1
            if depth > _MAX_DEPTH:
                raise ValueError("nested too deeply")
            # \sin 2x is sin(2x), but \sin x \cos x is sin(x) cos(x)
            parenthesised = peek() == "("
            argument = power()
            while (not parenthesised and peek() is not None and starts_atom(peek())
                   and peek() not in _FUNCS):
                argument = argument * power()
            value = _FUNCS[tok](argument)
            depth -= 1
            return _safe_pow(value, p) if p is not None else value
        if tok in _CONSTANTS:
            return _CONSTANTS[tok]
        if len(tok) == 1 and tok.isalpha():
            return sympy.Symbol(tok)
        raise ValueError(f"unsupported token {tok!r}")

    value = expr()
    if pos != len(toks):
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
    if a.has(*_BAD) or b.has(*_BAD):             # infinities: only structurally equal
        return False
    if a.is_Rational and b.is_Rational:           # exact, and a != b
        return False
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


def _equations_equal(a: str, b: str) -> bool:
    """L1 = R1 vs L2 = R2: same equation if L1-R1 = c (L2-R2) for a constant c != 0."""
    sides = [_parse(x) for x in _split_top(a, "=") + _split_top(b, "=")]
    if any(x is None for x in sides):
        return False
    da, db = sides[0] - sides[1], sides[2] - sides[3]
    if da == db or da == -db:
        return True
    symbols = sorted(da.free_symbols | db.free_symbols, key=str)
    if not symbols or len(symbols) > 8 or da.has(*_BAD) or db.has(*_BAD):
        return False
    ratios = []
    for point in _points(symbols):
        u, v = _value(da, point), _value(db, point)
        if u is not None and v is not None and v != 0:
            ratios.append(u / v)
    return (len(ratios) >= 2 and ratios[0] != 0
            and all(_near(r, ratios[0]) for r in ratios[1:]))


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
    """(kind, payload): matrix, set (unordered), tuple (ordered, with brackets), eq, scalar."""
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


@functools.lru_cache(maxsize=1 << 15)
def _equiv_cached(a: str, b: str) -> bool:
    (ka, pa), (kb, pb) = _shape(a), _shape(b)
    norm = lambda items: [_normalize(x.strip(), top=False) for x in items[:MAX_ITEMS + 1]]
    if ka != kb:      # a one-element set {5} equals its element 5
        if ka == "set" and len(pa) == 1:
            return _equiv_norm(normalize_answer(pa[0]), b)
        if kb == "set" and len(pb) == 1:
            return _equiv_norm(a, normalize_answer(pb[0]))
        if "eq" in (ka, kb):   # y = 2x+3 vs 2x+3: a name on the left is only a label
            eq, other = (a, b) if ka == "eq" else (b, a)
            lhs, rhs = _split_top(eq, "=")
            return bool(_LHS_RE.fullmatch(lhs)) and _equiv_norm(normalize_answer(rhs), other)
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
    return _scalar_equal(a, b)


# ----------------------------------------------------------------------------
# The hard time cap. Everything above that needs sympy runs in a worker process
# (`python rewards.py --serve`, JSON lines over pipes) that is killed when a
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
    if _as_fraction(a) is not None and _as_fraction(b) is not None:
        return False                               # distinct canonical numbers
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
                print("rewards: no grader worker process; comparing without a time cap",
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


def grade(response: str, gold: str) -> float:
    """1.0 if the last boxed answer of response is equivalent to gold, else 0.0."""
    answer = extract_answer(response)
    return 1.0 if answer is not None and is_equiv(answer, gold) else 0.0


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


def _winner(ids: list[int | None]) -> tuple[int | None, int]:
    counts: dict[int, int] = {}
    for cid in ids:
        if cid is not None:
            counts[cid] = counts.get(cid, 0) + 1
    if not counts:
        return None, 0
    # Class ids follow first appearance, so on ties the smallest id (the
    # class seen earliest in the list) wins: deterministic.
    best = min(counts, key=lambda c: (-counts[c], c))
    return best, counts[best]


def majority_vote(answers: list[str | None], classes: list[int | None] | None = None) -> tuple[str | None, int]:
    """Majority answer of a group and its vote count.

    None (and empty) answers do not vote; equivalent answers (0.5, \\frac12,
    \\dfrac{1}{2}) are merged into one class before counting. Returns
    (first-seen string of the winning class, class size). Ties are broken
    deterministically: the class whose first member appears earliest in
    `answers` wins. No answers at all -> (None, 0). `classes`: vote_classes(answers), if the caller has it.
    """
    ids = vote_classes(answers) if classes is None else classes
    best, count = _winner(ids)
    if best is None:
        return None, 0
    return answers[ids.index(best)], count


def self_rewards(responses: list[str]) -> list[float]:
    """SRT rewards of one prompt's group: 1.0 iff the response's answer is in the
    majority class; responses without an answer get 0.0 (all 0.0 if none has one)."""
    ids = vote_classes([extract_answer(r) for r in responses])
    best, _ = _winner(ids)
    return [1.0 if best is not None and cid == best else 0.0 for cid in ids]


# ----------------------------------------------------------------------------
# The SRT reward for TRL's GRPOTrainer (README: "Scaling out")


def _completion_text(completion) -> str:
    """A TRL completion as text: a string, or (conversational datasets) a list
    of message dicts whose last content is a string or a list of text parts."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def srt_reward(prompts, completions, **kwargs) -> list[float]:
    """SRT in TRL's reward-function signature: GRPOTrainer(reward_funcs=srt_reward).

    TRL passes one row per completion; rows with the same prompt form a group,
    and a completion gets 1.0 when its answer is in its group's majority
    class (self_rewards), else 0.0. No labels are read. With several
    processes TRL may split a group across them, so every rank's rows are
    gathered and each rank scores its own rows against the whole groups.
    Identical prompts in one batch would merge their groups: deduplicate the
    dataset, as the paper did for DAPO.
    """
    mine = [(p if isinstance(p, str) else repr(p), _completion_text(c)) for p, c in zip(prompts, completions)]
    everyone, offset = [mine], 0
    import torch.distributed as dist   # lazy: only the TRL path needs torch
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        offset = sum(len(rows) for rows in everyone[:dist.get_rank()])
    rows = [row for rank_rows in everyone for row in rank_rows]
    groups: dict[str, list[int]] = {}
    for i, (key, _) in enumerate(rows):
        groups.setdefault(key, []).append(i)
    rewards = [0.0] * len(rows)
    for idx in groups.values():
        for i, r in zip(idx, self_rewards([rows[i][1] for i in idx])):
            rewards[i] = r
    return rewards[offset:offset + len(mine)]


# ----------------------------------------------------------------------------
# Speed (bench.py calls this)
def _bench_group(kind: str, k: int) -> list[str]:
    """A realistic group of 32 answers; k varies the strings so caches never help."""
    if kind == "same":                 # a settled prompt: every sample agrees
        return [str(1000 + k)] * 32
    if kind == "numeric":              # one value in many notations, plus wrong numbers
        a, b = 2 * k + 1, 4 * k + 4
        right = [f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a / b}",
                 f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\left({a}/{b}\\right)", f"\\tfrac{{{a}}}{{{b}}}"]
        return (right * 3 + [str(n + k) for n in range(11)])[:32]
    p = (3, 5, 7, 11, 13, 17, 19, 23)[k % 8]   # "symbolic": one surd written many ways
    right = [f"\\frac{{\\sqrt{{{p}}}}}{{{p}}}", f"\\frac{{1}}{{\\sqrt{{{p}}}}}", f"\\sqrt{{{p}}}/{p}",
             f"{p}^{{-1/2}}", f"\\frac{{2\\sqrt{{{p}}}}}{{{2 * p}}}", f"\\frac{{\\sqrt{{{4 * p}}}}}{{{2 * p}}}"]
    wrong = [f"\\sqrt{{{p}}}", f"\\frac{{\\sqrt{{{p}}}}}{{2}}", f"\\frac{{{p}}}{{\\sqrt{{2}}}}",
             f"\\frac{{\\pi}}{{{p}}}", f"{p}x", f"\\sqrt{{{p}}}+1", f"\\frac{{{p}}}{{4}}"]
    return (right * 3 + wrong * 2)[:32]


def bench_grader() -> dict:
    """Grader speed on 32-answer groups with cold caches (a few seconds).

    vote32_ms_<mix>: one majority_vote over 32 answers: "same" (all one string),
    "numeric" (one value in 7 notations + 11 wrong numbers), "symbolic" (one surd
    in 6 forms + 7 wrong expressions); vote32_ms: their mean. answers_per_s:
    grade(response, gold) calls per second over the same three mixes.
    worker_start_ms: starting the sympy worker process (once per process).
    """
    _stop_workers()
    t = time.perf_counter()
    is_equiv("x+1", "1+x")                       # starts a worker
    out = {"worker_start_ms": 1000 * (time.perf_counter() - t)}
    _verdicts.clear()
    for cache in (_normalize, _parse, _equiv_cached):
        cache.cache_clear()
    mixes = ("same", "numeric", "symbolic")
    for kind in mixes:
        group = _bench_group(kind, 1)
        t = time.perf_counter()
        majority_vote(group)
        out[f"vote32_ms_{kind}"] = 1000 * (time.perf_counter() - t)
    out["vote32_ms"] = sum(out[f"vote32_ms_{kind}"] for kind in mixes) / len(mixes)
    pairs = [(f"so the answer is $\\boxed{{{ans}}}$.", group[0])
             for kind in mixes for group in [_bench_group(kind, 2)] for ans in group]
    t = time.perf_counter()
    for response, gold in pairs:
        grade(response, gold)
    out["answers_per_s"] = len(pairs) / (time.perf_counter() - t)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
