package hook

import (
	"fmt"
	"reflect"
	"text/template"
	"text/template/parse"
	"time"
)

// The run-time half of the prompt sandbox. checkPrompt refuses, at load, what can be seen in
// the template's text; instrument adds to the parsed template the two checks that need the
// values: every {{range}} goes through rangeable, which lets it range only over a slice, an
// array or a map (text/template also ranges over integers and functions, so a range over a
// variable or method chain that yields 10^12 would otherwise loop for hours), and every
// action is preceded by a step of the render's budget, which stops a render that takes too
// long whatever it does.

// Names of the sandbox's own template functions; a prompt that calls them gains nothing.
const (
	rangeFunc = "khookRangeable"
	stepFunc  = "khookStep"
)

// rangeable is the value a {{range}} may iterate over: a slice, an array or a map (nil is
// an empty range). Anything else, an integer or a function above all, is an error.
func rangeable(v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch k := reflect.ValueOf(v).Kind(); k {
	case reflect.Slice, reflect.Array, reflect.Map:
		return v, nil
	default:
		return nil, fmt.Errorf("{{range}} in a prompt ranges over lists and maps only, not a %s", k)
	}
}

// instrument rewrites t's tree in place: each range's value goes through rangeable, and a
// budget step precedes every action, branch and range body. It runs once, when the prompt
// is compiled; the rewritten tree is then shared, read-only, by every render.
func instrument(t *template.Template) error {
	if t.Tree == nil || t.Root == nil {
		return nil
	}
	step, err := template.New("step").Funcs(template.FuncMap{stepFunc: func() string { return "" }}).Parse("{{" + stepFunc + "}}")
	if err != nil {
		return err
	}
	instrumentList(t.Tree, t.Root, step.Root.Nodes[0])
	return nil
}

func instrumentList(tree *parse.Tree, l *parse.ListNode, step parse.Node) {
	if l == nil {
		return
	}
	nodes := make([]parse.Node, 0, 2*len(l.Nodes)+1)
	// A step at the start of every list, so that even an empty range body costs a step per
	// iteration.
	nodes = append(nodes, step)
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			nodes = append(nodes, n)
			continue
		case *parse.IfNode:
			instrumentList(tree, n.List, step)
			instrumentList(tree, n.ElseList, step)
		case *parse.WithNode:
			instrumentList(tree, n.List, step)
			instrumentList(tree, n.ElseList, step)
		case *parse.RangeNode:
			guardRange(tree, n.Pipe)
			instrumentList(tree, n.List, step)
			instrumentList(tree, n.ElseList, step)
		}
		nodes = append(nodes, step, n)
	}
	l.Nodes = nodes
}

// guardRange makes a range's pipeline {{range rangeable X}} from {{range X}}. checkPrompt
// allows only one command of one argument there.
func guardRange(tree *parse.Tree, p *parse.PipeNode) {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return
	}
	cmd := p.Cmds[0]
	fn := parse.NewIdentifier(rangeFunc).SetTree(tree).SetPos(cmd.Position())
	cmd.Args = []parse.Node{fn, cmd.Args[0]}
}

// renderBudget is one render's allowance of steps and time.
type renderBudget struct {
	steps    int
	deadline time.Time
}

// step spends one step of the budget; past it the render stops with ErrPromptTooSlow.
func (b *renderBudget) step() (string, error) {
	b.steps++
	if b.steps > maxRenderSteps {
		return "", fmt.Errorf("%w: more than %d steps", ErrPromptTooSlow, maxRenderSteps)
	}
	// The clock is read at every step: a step (a range iteration) can carry a body of
	// hundreds of actions, and reading it every 64 steps let a render overrun its time by
	// tens of milliseconds (found by FuzzHooks). Reading the clock costs tens of
	// nanoseconds.
	if time.Now().After(b.deadline) {
		return "", fmt.Errorf("%w: more than %s", ErrPromptTooSlow, MaxRenderTime)
	}
	return "", nil
}

// execute renders t with data under a fresh budget, its output limited to MaxPromptOutput.
// The template is cloned so that this render's step function is its own: a parsed template
// is shared by every worker.
func execute(t *template.Template, data *promptData) (string, error) {
	b := &renderBudget{deadline: time.Now().Add(MaxRenderTime)}
	run, err := t.Clone()
	if err != nil {
		return "", err
	}
	run.Funcs(template.FuncMap{stepFunc: b.step})
	out := limitedBuffer{limit: MaxPromptOutput}
	if err := run.Execute(&out, data); err != nil {
		return "", err
	}
	return out.String(), nil
}
