// Package jsonscan reads JSON documents in one pass without decoding them into Go values: it
// validates a document, walks the members of an object, and unquotes strings.
//
// It exists for the pipeline's hot path. The mapper and the dispatcher read a few
// attributes of every event (the CloudEvent envelope, a handful of well-known payload
// fields) and carry the rest as bytes; encoding/json validated each document, then decoded
// it into a struct, then decoded the payload a second and a third time, and that was most of
// the mapper's CPU. The rules here are encoding/json's, so that a document one accepts the
// other accepts, and a string both unquote reads the same: the same grammar, the same
// nesting limit, invalid UTF-8 read as U+FFFD, and unpaired surrogate escapes as U+FFFD. The
// package's fuzz test holds it to that against encoding/json.
package jsonscan

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth is how deeply arrays and objects may nest, encoding/json's own limit: a hostile
// document of a million "[" costs a bounded stack, not a crash.
const MaxDepth = 10000

// Kind is the type of a JSON value, from its first byte.
type Kind byte

// The kinds of JSON values.
const (
	Invalid Kind = iota
	Null
	Bool
	Number
	String
	Array
	Object
)

var kindNames = [...]string{Invalid: "invalid JSON", Null: "null", Bool: "a boolean", Number: "a number",
	String: "a string", Array: "an array", Object: "an object"}

// String names the kind as an error message says it: "a number", "an object".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return kindNames[Invalid]
}

// KindOf returns the kind of the valid JSON value v (no leading whitespace).
func KindOf(v []byte) Kind {
	if len(v) == 0 {
		return Invalid
	}
	switch c := v[0]; {
	case c == 'n':
		return Null
	case c == 't' || c == 'f':
		return Bool
	case c == '"':
		return String
	case c == '[':
		return Array
	case c == '{':
		return Object
	case c == '-' || '0' <= c && c <= '9':
		return Number
	}
	return Invalid
}

// SyntaxError is a document that is not valid JSON, with the offset where it stops being
// valid.
type SyntaxError struct {
	Offset int
	msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at offset %d: %s", e.Offset, e.msg)
}

func syntaxErr(off int, format string, args ...any) error {
	return &SyntaxError{Offset: off, msg: fmt.Sprintf(format, args...)}
}

// Valid reports whether b is one valid JSON value, with optional surrounding whitespace.
func Valid(b []byte) bool {
	_, err := Value(b)
	return err == nil
}

// Value returns the one JSON value b holds, without the whitespace around it, after
// checking that b holds exactly one valid value.
func Value(b []byte) ([]byte, error) {
	start := skipSpace(b, 0)
	end, err := skipValue(b, start, 0)
	if err != nil {
		return nil, err
	}
	if rest := skipSpace(b, end); rest != len(b) {
		return nil, syntaxErr(rest, "%q after the top-level value", b[rest])
	}
	return b[start:end], nil
}

// Members calls fn with each member of the object b holds (surrounding whitespace allowed),
// in document order: the member's unquoted name and its value's bytes (valid JSON, without
// surrounding whitespace). The whole of b is validated first, so fn never sees a member of
// a document that turns out to be invalid. It stops at the first error fn returns and
// returns it. b that is valid JSON but not an object is an error.
//
// The name is only valid during the call: it may share a buffer that the next call reuses.
func Members(b []byte, fn func(name []byte, value []byte) error) error {
	v, err := Value(b)
	if err != nil {
		return err
	}
	if KindOf(v) != Object {
		return errors.New("not a JSON object")
	}
	return members(v, fn)
}

// members walks the members of the JSON object v. v is expected to be valid, but a
// document that is not (a caller's slicing mistake) ends the walk with a SyntaxError rather
// than a panic.
func members(v []byte, fn func(name, value []byte) error) error {
	var scratch []byte
	i := skipSpace(v, 1)
	if i < len(v) && v[i] == '}' {
		return nil
	}
	for {
		if i >= len(v) || v[i] != '"' {
			return syntaxErr(i, "expected a member name")
		}
		end, err := skipString(v, i)
		if err != nil {
			return err
		}
		name, ok := unquoteNoCopy(v[i:end])
		if !ok {
			scratch = appendUnquoted(scratch[:0], v[i:end])
			name = scratch
		}
		i = skipSpace(v, end)
		if i >= len(v) || v[i] != ':' {
			return syntaxErr(i, "expected ':' after a member name")
		}
		i = skipSpace(v, i+1)
		vend, err := skipValue(v, i, 1)
		if err != nil {
			return err
		}
		if err := fn(name, v[i:vend]); err != nil {
			return err
		}
		if i, err = next(v, vend, '}'); err != nil || i < 0 {
			return err
		}
	}
}

// next reads what follows a member or element ending at i: the container's closing byte
// (returns -1) or a comma (returns where the next one starts).
func next(v []byte, i int, closing byte) (int, error) {
	i = skipSpace(v, i)
	switch {
	case i >= len(v):
		return 0, syntaxErr(i, "unexpected end of input")
	case v[i] == closing:
		return -1, nil
	case v[i] == ',':
		return skipSpace(v, i+1), nil
	default:
		return 0, syntaxErr(i, "%q after a value", v[i])
	}
}

// Lookup returns the value of the last member of the valid JSON object v named name, as
// encoding/json keeps the last of duplicate names in a map. v that is not an object has no
// members.
func Lookup(v []byte, name string) ([]byte, bool) {
	if KindOf(v) != Object {
		return nil, false
	}
	var found []byte
	ok := false
	_ = members(v, func(n, value []byte) error {
		if string(n) == name {
			found, ok = value, true
		}
		return nil
	})
	return found, ok
}

// Elements calls fn with each element of the valid JSON array v, in order, and stops at the
// first error fn returns (or at the first syntax error, for v that is not valid). v that is
// not an array has no elements.
func Elements(v []byte, fn func(i int, element []byte) error) error {
	if KindOf(v) != Array {
		return nil
	}
	j := skipSpace(v, 1)
	if j < len(v) && v[j] == ']' {
		return nil
	}
	for n := 0; ; n++ {
		end, err := skipValue(v, j, 1)
		if err != nil {
			return err
		}
		if err := fn(n, v[j:end]); err != nil {
			return err
		}
		if j, err = next(v, end, ']'); err != nil || j < 0 {
			return err
		}
	}
}

// errFound stops Index's walk.
var errFound = errors.New("found")

// Index returns element i of the valid JSON array v.
func Index(v []byte, i int) ([]byte, bool) {
	if i < 0 {
		return nil, false
	}
	var found []byte
	err := Elements(v, func(n int, e []byte) error {
		if n == i {
			found = e
			return errFound
		}
		return nil
	})
	return found, errors.Is(err, errFound)
}

// Unquote returns the text of the JSON string s (with its quotes), as encoding/json
// unquotes it. ok is false when s is not exactly one valid string.
func Unquote(s []byte) (string, bool) {
	if KindOf(s) != String {
		return "", false
	}
	if end, err := skipString(s, 0); err != nil || end != len(s) {
		return "", false
	}
	if u, ok := unquoteNoCopy(s); ok {
		return string(u), true
	}
	return string(appendUnquoted(nil, s)), true
}

// TrimSpace returns b without the whitespace JSON allows around a value (space, tab, CR,
// LF). bytes.TrimSpace also strips form feeds, vertical tabs and Unicode spaces, which
// would let a document that is not JSON pass for one.
func TrimSpace(b []byte) []byte {
	start := skipSpace(b, 0)
	end := len(b)
	for end > start {
		switch b[end-1] {
		case ' ', '\t', '\n', '\r':
			end--
			continue
		}
		break
	}
	return b[start:end]
}

// unquoteNoCopy returns the inside of the valid JSON string s when it needs no unescaping:
// no backslash and valid UTF-8.
func unquoteNoCopy(s []byte) ([]byte, bool) {
	inner := s[1 : len(s)-1]
	for i := 0; i < len(inner); {
		c := inner[i]
		if c == '\\' {
			return nil, false
		}
		if c < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRune(inner[i:])
		if r == utf8.RuneError && size == 1 {
			return nil, false
		}
		i += size
	}
	return inner, true
}

// appendUnquoted appends the text of the valid JSON string s to b: escapes decoded, a
// surrogate pair as its rune, an unpaired surrogate and each byte of invalid UTF-8 as
// U+FFFD.
func appendUnquoted(b, s []byte) []byte {
	inner := s[1 : len(s)-1]
	for i := 0; i < len(inner); {
		c := inner[i]
		switch {
		case c == '\\':
			e := inner[i+1]
			switch e {
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r := hex4(inner[i+2 : i+6])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(inner) && inner[i] == '\\' && inner[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(inner[i+2:i+6])); dec != unicode.ReplacementChar {
							b = utf8.AppendRune(b, dec)
							i += 6
							continue
						}
					}
					r = unicode.ReplacementChar
				}
				b = utf8.AppendRune(b, r)
				continue
			default: // '"', '\\', '/'
				b = append(b, e)
			}
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRune(inner[i:])
			b = utf8.AppendRune(b, r) // RuneError for invalid UTF-8, as encoding/json
			i += size
		}
	}
	return b
}

// hex4 reads four hex digits (validated already).
func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		default:
			c = c - 'A' + 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue checks the value starting at b[i] and returns where it ends. depth is the
// nesting of the containers around it.
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, syntaxErr(i, "unexpected end of input")
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		return skipObject(b, i, depth+1)
	case c == '[':
		return skipArray(b, i, depth+1)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return skipNumber(b, i)
	default:
		return i, syntaxErr(i, "%q looking for the beginning of a value", c)
	}
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, syntaxErr(i, "invalid literal, expected %s", lit)
	}
	return i + len(lit), nil
}

// skipNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return i, syntaxErr(i, "invalid number starting at offset %d", start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return i, syntaxErr(i, "invalid number starting at offset %d: no digits after the point", start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return i, syntaxErr(i, "invalid number starting at offset %d: no digits in the exponent", start)
		}
	}
	return i, nil
}

// skipString checks the string starting at b[i] (its opening quote) and returns the offset
// after its closing quote. Control characters must be escaped; bytes of invalid UTF-8 are
// allowed, as encoding/json allows them (and reads each as U+FFFD).
func skipString(b []byte, i int) (int, error) {
	start := i
	i++
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(b) {
				return i, syntaxErr(i, "unterminated string starting at offset %d", start)
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(b)-i < 6 || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, syntaxErr(i, "invalid \\u escape in string")
				}
				i += 6
			default:
				return i, syntaxErr(i, "invalid escape %q in string", b[i+1])
			}
		case c < 0x20:
			return i, syntaxErr(i, "control character %#02x in string", c)
		default:
			i++
		}
	}
	return i, syntaxErr(i, "unterminated string starting at offset %d", start)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func skipObject(b []byte, i, depth int) (int, error) {
	if depth > MaxDepth {
		return i, syntaxErr(i, "exceeded max depth of %d", MaxDepth)
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, syntaxErr(i, "expected a member name")
		}
		end, err := skipString(b, i)
		if err != nil {
			return end, err
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return i, syntaxErr(i, "expected ':' after a member name")
		}
		i = skipSpace(b, i+1)
		if i, err = skipValue(b, i, depth); err != nil {
			return i, err
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, syntaxErr(i, "unexpected end of input in an object")
		}
		switch b[i] {
		case '}':
			return i + 1, nil
		case ',':
			i = skipSpace(b, i+1)
		default:
			return i, syntaxErr(i, "%q after an object member", b[i])
		}
	}
}

func skipArray(b []byte, i, depth int) (int, error) {
	if depth > MaxDepth {
		return i, syntaxErr(i, "exceeded max depth of %d", MaxDepth)
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		var err error
		if i, err = skipValue(b, i, depth); err != nil {
			return i, err
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, syntaxErr(i, "unexpected end of input in an array")
		}
		switch b[i] {
		case ']':
			return i + 1, nil
		case ',':
			i = skipSpace(b, i+1)
		default:
			return i, syntaxErr(i, "%q after an array element", b[i])
		}
	}
}
