package hook

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Prompt limits. A Hook is written by whoever may create Hooks in a namespace, so a prompt is
// untrusted input: it must not be able to run forever, take unbounded memory, or stall the
// dispatcher's workers.
const (
	// MaxPromptSource is the longest prompt template accepted.
	MaxPromptSource = 10000
	// MaxPromptOutput is the most a prompt may render to for one event; an agent's context
	// is the real bound, and 64 KiB is well beyond any useful prompt. A render past it fails
	// the task permanently (dead-lettered as prompt-too-large).
	MaxPromptOutput = 64 << 10
	// maxFormatWidth bounds printf widths and precisions, which allocate before anything is
	// written and so escape MaxPromptOutput.
	maxFormatWidth = 1000
)

// ErrPromptTooLarge is a render that exceeded MaxPromptOutput.
var ErrPromptTooLarge = fmt.Errorf("prompt renders to more than %d bytes", MaxPromptOutput)

// Render bounds in time. Ranging only over the event's collections, never nested, with no
// recursion and bounded output, a prompt's cost is linear in the event's size; these bound
// what that still allows (a 1 MiB payload ranged over by a body of a thousand actions) and
// anything the static checks miss. Every render, at load and per task, runs under them.
var (
	// MaxRenderTime bounds one render in wall-clock time.
	MaxRenderTime = 100 * time.Millisecond
	// maxRenderSteps bounds one render in steps (each action, range iteration and branch
	// taken is one), the same on every machine.
	maxRenderSteps = 1_000_000
)

// ErrPromptTooSlow is a render stopped by MaxRenderTime or maxRenderSteps.
var ErrPromptTooSlow = errors.New("prompt took too long to render")

// checkPrompt rejects, at load, the template constructs whose cost does not depend on the
// event's size: ranging over a number or over a function's result (text/template ranges over
// integers, so {{range 1000000000000}} never ends), nested ranges (quadratic in the event's
// size), and template definitions and calls (recursion). What remains costs time linear in
// the event's size, and its output is capped by MaxPromptOutput.
func checkPrompt(t *template.Template) error {
	for _, tt := range t.Templates() {
		if tt.Name() != t.Name() {
			return errors.New("{{define}} and {{block}} are not allowed in prompts")
		}
	}
	if t.Tree == nil {
		return nil
	}
	return checkNode(t.Tree.Root, 0)
}

func checkNode(n parse.Node, ranges int) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := checkNode(c, ranges); err != nil {
				return err
			}
		}
	case *parse.RangeNode:
		if ranges > 0 {
			return fmt.Errorf("line %d: nested {{range}} is not allowed in prompts", n.Line)
		}
		if err := checkRangePipe(n.Pipe); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		if err := checkNode(n.List, ranges+1); err != nil {
			return err
		}
		return checkNode(n.ElseList, ranges)
	case *parse.IfNode:
		if err := checkNode(n.List, ranges); err != nil {
			return err
		}
		return checkNode(n.ElseList, ranges)
	case *parse.WithNode:
		if err := checkNode(n.List, ranges); err != nil {
			return err
		}
		return checkNode(n.ElseList, ranges)
	case *parse.TemplateNode:
		return fmt.Errorf("line %d: {{template}} is not allowed in prompts", n.Line)
	}
	return nil
}

// checkRangePipe allows ranging only over the event's data: a field or variable chain such
// as .Data.items or $.Data.items, never a literal or a function's result.
func checkRangePipe(p *parse.PipeNode) error {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return errors.New("{{range}} in a prompt must range over a field of the event, such as .Data.items")
	}
	switch p.Cmds[0].Args[0].(type) {
	case *parse.FieldNode, *parse.VariableNode, *parse.ChainNode, *parse.DotNode:
		return nil
	}
	return errors.New("{{range}} in a prompt must range over a field of the event, such as .Data.items, not a number or a function's result")
}

// limitedBuffer fails writes past its limit, which stops the template's execution there.
type limitedBuffer struct {
	bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.limit {
		return 0, ErrPromptTooLarge
	}
	return b.Buffer.Write(p)
}

// checkArgs refuses arguments whose formatted size is past MaxPromptOutput, before they are
// formatted together: print, printf and the escapers build their whole result before the
// template writes any of it, so a call with a thousand 64 KiB arguments would allocate
// gigabytes and only then be refused. A string counts its length; anything else (the
// event's data) is formatted on its own, which costs at most its size, and the count stops
// at the first argument past the limit.
func checkArgs(args []any) error {
	n := 0
	for _, a := range args {
		if s, ok := a.(string); ok {
			n += len(s)
		} else {
			n += len(fmt.Sprint(a))
		}
		if n > MaxPromptOutput {
			return ErrPromptTooLarge
		}
	}
	return nil
}

// boundedPrintf is text/template's printf with widths and precisions bounded, since
// "%0999999999d" allocates its whole output before the template writes any of it, and its
// arguments bounded as checkArgs bounds them.
func boundedPrintf(format string, args ...any) (string, error) {
	if err := checkFormat(format); err != nil {
		return "", err
	}
	if err := checkArgs(args); err != nil {
		return "", err
	}
	s := fmt.Sprintf(format, args...)
	if len(s) > MaxPromptOutput {
		return "", ErrPromptTooLarge
	}
	return s, nil
}

// checkFormat refuses printf formats whose widths or precisions exceed maxFormatWidth, and
// the * and [n] forms that take them from the arguments.
func checkFormat(format string) error {
	n := 0 // the number being read, in a verb's flags, width or precision
	inVerb := false
	for i := 0; i < len(format); i++ {
		c := format[i]
		switch {
		case !inVerb:
			inVerb = c == '%'
			n = 0
		case c >= '0' && c <= '9':
			if n = n*10 + int(c-'0'); n > maxFormatWidth {
				return fmt.Errorf("printf: width or precision over %d in %q", maxFormatWidth, format)
			}
		case c == '*' || c == '[':
			return fmt.Errorf("printf: * and [n] are not allowed in prompts (%q)", format)
		case c == '.' || c == '-' || c == '+' || c == ' ' || c == '#':
			n = 0
		default: // the verb (or %%) ends it
			inVerb = false
		}
	}
	return nil
}

// bounded wraps an escaping builtin (html, js, urlquery) so that it refuses arguments past
// MaxPromptOutput before escaping them, and an output past it after: each multiplies its
// input's size (js doubles a backslash), and a chain of them would otherwise grow a short
// string exponentially before anything is written.
func bounded(escape func(...any) string) func(...any) (string, error) {
	return func(args ...any) (string, error) {
		if err := checkArgs(args); err != nil {
			return "", err
		}
		s := escape(args...)
		if len(s) > MaxPromptOutput {
			return "", ErrPromptTooLarge
		}
		return s, nil
	}
}

// boundedPrint and boundedPrintln bound the builtins' arguments and output the same way.
func boundedPrint(args ...any) (string, error) {
	if err := checkArgs(args); err != nil {
		return "", err
	}
	s := fmt.Sprint(args...)
	if len(s) > MaxPromptOutput {
		return "", ErrPromptTooLarge
	}
	return s, nil
}

func boundedPrintln(args ...any) (string, error) {
	if err := checkArgs(args); err != nil {
		return "", err
	}
	s := fmt.Sprintln(args...)
	if len(s) > MaxPromptOutput {
		return "", ErrPromptTooLarge
	}
	return s, nil
}

// promptFields are the names a prompt may use at the top level of its data: the fields of
// promptData.
var promptFields = func() map[string]bool {
	fields := map[string]bool{}
	t := reflect.TypeFor[promptData]()
	for i := range t.NumField() {
		fields[t.Field(i).Name] = true
	}
	return fields
}()

// literalizeUnknown keeps a prompt's unknown placeholders as written, as kagent's khook did:
// it sent {{.PodName}} literally where it knew no PodName, and a migrated Hook must not stop
// working over it. Each action that is nothing but a field of the event data that does not
// exist is rewritten into a string constant of its own text; warnings name each one, for the
// Hook's owner to fix. Only actions where the dot is the event are rewritten: inside
// {{range}} and {{with}} the dot is something else, and fields there are the payload's.
func literalizeUnknown(text string, root *parse.ListNode) (string, []string) {
	type span struct{ start, end int }
	var spans []span
	var walk func(l *parse.ListNode)
	walk = func(l *parse.ListNode) {
		if l == nil {
			return
		}
		for _, n := range l.Nodes {
			switch n := n.(type) {
			case *parse.ActionNode:
				if f := soleField(n.Pipe); f != nil && !promptFields[f.Ident[0]] {
					start := strings.LastIndex(text[:n.Pos], "{{")
					end := strings.Index(text[n.Pos:], "}}")
					if start >= 0 && end >= 0 {
						spans = append(spans, span{start, int(n.Pos) + end + 2})
					}
				}
			case *parse.IfNode:
				walk(n.List)
				walk(n.ElseList)
			case *parse.RangeNode:
				walk(n.ElseList)
			case *parse.WithNode:
				walk(n.ElseList)
			}
		}
	}
	walk(root)
	var warnings []string
	for i := len(spans) - 1; i >= 0; i-- {
		s := spans[i]
		orig := text[s.start:s.end]
		warnings = append(warnings, fmt.Sprintf("%s is not a field khook knows, so it is sent as written", orig))
		text = text[:s.start] + "{{" + strconv.Quote(orig) + "}}" + text[s.end:]
	}
	slices.Reverse(warnings)
	return text, warnings
}

// soleField returns the field of a pipeline that is only a field, {{.Name}} or {{.A.B}}, and
// nil for anything else.
func soleField(p *parse.PipeNode) *parse.FieldNode {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return nil
	}
	f, _ := p.Cmds[0].Args[0].(*parse.FieldNode)
	return f
}
