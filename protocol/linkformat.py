"""CoRE Link Format (RFC 6690 §2) builder and parser, for the LwM2M Register body.

Owns: ``build(links)`` and ``parse(text)`` for lists of ``(target, attrs)`` where attrs maps
a parameter name to a str (quoted on the wire), an int (bare digits) or True (a flag with no
value). Pure and sans-I/O; MicroPython and CPython.

Decisions:
* The parser is a single left-to-right scan with no regular expressions and no recursion,
  so hostile input (unterminated quotes or ``<``, missing ``>``, stray characters) fails with
  LinkFormatError in linear time.
* Whitespace (space, tab, CR, LF) around links and separators is tolerated, as several
  LwM2M clients emit it; it is not allowed inside a target or a parameter name.
* A bare value made only of digits (at most 18 of them) parses as an int, anything else bare
  as a str; a quoted value is always a str (backslash escapes as in RFC 6690's
  quoted-string). A repeated parameter keeps its first value.
* Parameter names are RFC 6690 ``parmname`` characters (letters, digits, !#$&+-.^_`|~),
  optionally ending in ``*`` (RFC 8288 extended parameters are kept as plain text).
"""


class LinkFormatError(ValueError):
    """Text that is not valid CoRE Link Format, or links that cannot be written as such."""


_WS = " \t\r\n"
_NAME_EXTRA = "!#$&+-.^_`|~*"
_BARE_STOP = ",;" + _WS


def _name_ok(name):
    if not name:
        return False
    for ch in name:
        if not (("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9") or ch in _NAME_EXTRA):
            return False
    return True


def build(links):
    """Return the link-format text of ``links`` (list of (target, attrs dict)), RFC 6690 §2.

    Attribute values: str -> quoted (with " and \\ escaped), int -> bare, True -> flag;
    False and None attributes are left out. Raises LinkFormatError for a target containing
    ">" or whitespace, a bad parameter name, or an unsupported value type.
    """
    parts = []
    for target, attrs in links:
        if not isinstance(target, str) or ">" in target or "<" in target:
            raise LinkFormatError("bad link target %r" % (target,))
        for ch in _WS:
            if ch in target:
                raise LinkFormatError("whitespace in link target %r" % (target,))
        s = "<" + target + ">"
        if attrs:
            for name in attrs:
                if not isinstance(name, str) or not _name_ok(name):
                    raise LinkFormatError("bad parameter name %r" % (name,))
            for name in sorted(attrs):
                val = attrs[name]
                if val is True:
                    s += ";" + name
                elif val is False or val is None:
                    continue
                elif isinstance(val, int):
                    s += ";%s=%d" % (name, val)
                elif isinstance(val, str):
                    s += ';%s="%s"' % (name, val.replace("\\", "\\\\").replace('"', '\\"'))
                else:
                    raise LinkFormatError("unsupported value for %r: %s" % (name, type(val).__name__))
        parts.append(s)
    return ",".join(parts)


def _digits(s):
    for ch in s:
        if not "0" <= ch <= "9":
            return False
    return True


def _skip_ws(text, i, n):
    while i < n and text[i] in _WS:
        i += 1
    return i


def parse(text):
    """Parse link-format ``text`` (str or UTF-8 bytes) into a list of (target, attrs dict).

    Returns [] for empty or all-whitespace text. Raises LinkFormatError (with the character
    position) for a missing ``<`` or ``>``, an unterminated quoted string, a bad parameter
    name, or garbage between links.
    """
    if not isinstance(text, str):
        try:
            text = str(bytes(text), "utf-8")
        except (UnicodeError, TypeError):
            raise LinkFormatError("link-format body is not UTF-8 text") from None
    n = len(text)
    links = []
    i = _skip_ws(text, 0, n)
    if i == n:
        return links
    while True:
        if i >= n or text[i] != "<":
            raise LinkFormatError("expected '<' at position %d" % i)
        j = text.find(">", i + 1)
        if j < 0:
            raise LinkFormatError("unterminated '<' at position %d" % i)
        target = text[i + 1 : j]
        if "<" in target:
            raise LinkFormatError("'<' inside link target at position %d" % i)
        for ch in _WS:
            if ch in target:
                raise LinkFormatError("whitespace inside link target at position %d" % i)
        attrs = {}
        i = _skip_ws(text, j + 1, n)
        while i < n and text[i] == ";":
            i = _skip_ws(text, i + 1, n)
            start = i
            while i < n and text[i] not in "=;," and text[i] not in _WS:
                i += 1
            name = text[start:i]
            if not _name_ok(name):
                raise LinkFormatError("bad parameter name %r at position %d" % (name, start))
            i = _skip_ws(text, i, n)
            if i < n and text[i] == "=":
                i = _skip_ws(text, i + 1, n)
                if i < n and text[i] == '"':
                    i += 1
                    chunks = []
                    seg = i
                    while True:
                        if i >= n:
                            raise LinkFormatError("unterminated quoted value at position %d" % (seg - 1))
                        ch = text[i]
                        if ch == '"':
                            break
                        if ch == "\\":
                            if i + 1 >= n:
                                raise LinkFormatError("unterminated quoted value at position %d" % (seg - 1))
                            chunks.append(text[seg:i])
                            chunks.append(text[i + 1])
                            i += 2
                            seg = i
                            continue
                        i += 1
                    chunks.append(text[seg:i])
                    value = "".join(chunks)
                    i += 1
                else:
                    start = i
                    while i < n and text[i] not in _BARE_STOP:
                        i += 1
                    value = text[start:i]
                    if '"' in value or "<" in value or ">" in value:
                        raise LinkFormatError("bad bare value at position %d" % start)
                    if value and len(value) <= 18 and _digits(value):
                        value = int(value)
                i = _skip_ws(text, i, n)
            else:
                value = True
            if name not in attrs:
                attrs[name] = value
        links.append((target, attrs))
        if i >= n:
            return links
        if text[i] != ",":
            raise LinkFormatError("expected ',' or ';' at position %d" % i)
        i = _skip_ws(text, i + 1, n)
