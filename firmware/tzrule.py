"""POSIX TZ strings (IEEE 1003.1 §8.3, as in /3/0/15): UTC <-> local time with DST rules.

Accepted: ``std offset [dst [offset] [,rule,rule]]`` where names are 3+ letters or ``<...>``
quoted (``<+03>``), offsets ``[+-]hh[:mm[:ss]]`` *west* of Greenwich (so ``CET-1`` is UTC+1),
the DST offset defaulting to one hour ahead of standard time, and rules ``Mm.w.d`` (day ``d``,
0 = Sunday, of week ``w`` 1..5 (5 = last) of month ``m``), ``Jn`` (1..365, no Feb 29) or ``n``
(0..365), each with an optional ``/time`` (default 02:00:00; may be negative or beyond 24 h as
RFC 8536 allows). A DST zone without rules uses the US rules ``M3.2.0,M11.1.0``.
Southern-hemisphere zones (start after end in the year) work.

Examples: ``"UTC0"``, ``"CET-1CEST,M3.5.0,M10.5.0/3"`` (Europe/Paris),
``"EST5EDT,M3.2.0,M11.1.0"``, ``"NZST-12NZDT,M9.5.0,M4.1.0/3"``, ``"<+0330>-3:30"``.

Local times that do not exist (spring-forward gap) resolve with the *standard* offset (so a
step at 02:30 on the change night happens at 03:30 DST); ambiguous ones (autumn overlap) resolve
to the first occurrence (DST). All arithmetic is on ints; nothing is cached at module level.
"""

from firmware.sun import civil_from_days, days_from_civil

_MAX_LEN = 64


def _parse_name(s, i):
    n = len(s)
    if i < n and s[i] == "<":
        j = s.find(">", i)
        if j < 0 or j - i - 1 < 3:
            raise ValueError("bad quoted zone name")
        return s[i + 1 : j], j + 1
    j = i
    while j < n and s[j].isalpha():
        j += 1
    if j - i < 3:
        raise ValueError("zone name needs 3+ letters")
    return s[i:j], j


def _parse_hms(s, i):
    """Parse [+-]hh[:mm[:ss]] at i; return (seconds, next index)."""
    n = len(s)
    sign = 1
    if i < n and s[i] in "+-":
        sign = -1 if s[i] == "-" else 1
        i += 1
    vals = []
    for _ in range(3):
        j = i
        while j < n and s[j].isdigit():
            j += 1
        if j == i or j - i > 3:
            raise ValueError("bad time field in TZ")
        vals.append(int(s[i:j]))
        i = j
        if i < n and s[i] == ":" and len(vals) < 3:
            i += 1
        else:
            break
    while len(vals) < 3:
        vals.append(0)
    if vals[0] > 167 or vals[1] > 59 or vals[2] > 59:
        raise ValueError("TZ time out of range")
    return sign * (vals[0] * 3600 + vals[1] * 60 + vals[2]), i


def _parse_rule(s, i):
    """Parse one rule; return ((kind, a, b, c, secs), next index)."""
    n = len(s)
    if i < n and s[i] == "M":
        parts = []
        i += 1
        for k in range(3):
            j = i
            while j < n and s[j].isdigit():
                j += 1
            if j == i:
                raise ValueError("bad M rule")
            parts.append(int(s[i:j]))
            i = j
            if k < 2:
                if i >= n or s[i] != ".":
                    raise ValueError("bad M rule")
                i += 1
        m, w, d = parts
        if not (1 <= m <= 12 and 1 <= w <= 5 and 0 <= d <= 6):
            raise ValueError("M rule out of range")
        rule = ["M", m, w, d]
    else:
        kind = "n"
        if i < n and s[i] == "J":
            kind = "J"
            i += 1
        j = i
        while j < n and s[j].isdigit():
            j += 1
        if j == i:
            raise ValueError("bad TZ rule")
        v = int(s[i:j])
        i = j
        if (kind == "J" and not 1 <= v <= 365) or (kind == "n" and not 0 <= v <= 365):
            raise ValueError("TZ rule day out of range")
        rule = [kind, v, 0, 0]
    secs = 7200
    if i < n and s[i] == "/":
        secs, i = _parse_hms(s, i + 1)
    rule.append(secs)
    return tuple(rule), i


def _is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _rule_day(rule, year):
    """Day count (since 1970) on which ``rule`` falls in ``year``."""
    kind = rule[0]
    if kind == "M":
        m, w, d = rule[1], rule[2], rule[3]
        first = days_from_civil(year, m, 1)
        wd = (first + 4) % 7  # 1970-01-01 was a Thursday; 0 = Sunday
        day = first + (d - wd) % 7 + 7 * (w - 1)
        nm_y, nm_m = (year + 1, 1) if m == 12 else (year, m + 1)
        nxt = days_from_civil(nm_y, nm_m, 1)
        while day >= nxt:
            day -= 7
        return day
    jan1 = days_from_civil(year, 1, 1)
    if kind == "J":
        n = rule[1] - 1
        if _is_leap(year) and rule[1] >= 60:
            n += 1
        return jan1 + n
    return jan1 + rule[1]


class TZ:
    """A parsed POSIX TZ string. Raises ValueError (clear message) on anything malformed."""

    def __init__(self, spec):
        if not isinstance(spec, str) or not spec or len(spec) > _MAX_LEN:
            raise ValueError("TZ must be a non-empty string of at most 64 characters")
        self.spec = spec
        s = spec
        self.std_name, i = _parse_name(s, 0)
        off, i = _parse_hms(s, i)
        self.std_offset = -off  # seconds EAST of UTC
        self.dst_name = None
        self.dst_offset = self.std_offset
        self.start = self.end = None
        n = len(s)
        if i < n:
            self.dst_name, i = _parse_name(s, i)
            self.dst_offset = self.std_offset + 3600
            if i < n and s[i] != ",":
                off, i = _parse_hms(s, i)
                self.dst_offset = -off
            if i < n:
                if s[i] != ",":
                    raise ValueError("expected ',' before DST rules")
                self.start, i = _parse_rule(s, i + 1)
                if i >= n or s[i] != ",":
                    raise ValueError("DST needs a start and an end rule")
                self.end, i = _parse_rule(s, i + 1)
            else:
                self.start = ("M", 3, 2, 0, 7200)
                self.end = ("M", 11, 1, 0, 7200)
        if i != n:
            raise ValueError("trailing characters in TZ: %r" % s[i:])
        if abs(self.std_offset) > 26 * 3600 or abs(self.dst_offset) > 26 * 3600:
            raise ValueError("TZ offset out of range")

    def transitions(self, year):
        """UTC Unix times (start, end) of DST in ``year``, or None without DST."""
        if self.start is None:
            return None
        st = _rule_day(self.start, year) * 86400 + self.start[4] - self.std_offset
        en = _rule_day(self.end, year) * 86400 + self.end[4] - self.dst_offset
        return st, en

    def is_dst(self, unix):
        if self.start is None:
            return False
        year = civil_from_days((unix + self.std_offset) // 86400)[0]
        st, en = self.transitions(year)
        if st < en:
            return st <= unix < en
        return not (en <= unix < st)  # southern hemisphere

    def utc_offset(self, unix):
        """Seconds east of UTC in force at Unix time ``unix``."""
        return self.dst_offset if self.is_dst(unix) else self.std_offset

    def to_local(self, unix):
        """Local wall-clock seconds (a Unix-like count in local time) for a UTC Unix time."""
        return unix + self.utc_offset(unix)

    def from_local(self, local):
        """UTC Unix time of a local wall-clock time (gap: standard offset; overlap: DST first)."""
        if self.start is None:
            return local - self.std_offset
        cand_dst = local - self.dst_offset
        if self.is_dst(cand_dst):
            return cand_dst
        cand_std = local - self.std_offset
        if not self.is_dst(cand_std):
            return cand_std
        return cand_std  # in the gap: the standard reading of it
