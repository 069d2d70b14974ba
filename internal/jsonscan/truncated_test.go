package jsonscan

import (
	"fmt"
	"testing"
)

// The walkers expect valid documents, but a truncated one (a caller that forgot Value, or
// sliced a value wrongly) must end the walk, not panic. (Found by an adversarial review.)
func TestWalkersDoNotPanicOnTruncatedInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"Lookup {", func() { Lookup([]byte(`{`), "a") }},
		{`Lookup {"a":1`, func() { Lookup([]byte(`{"a":1`), "a") }},
		{"Index [", func() { Index([]byte(`[`), 0) }},
		{"Index [1,", func() { Index([]byte(`[1,`), 3) }},
		{"Elements [1", func() { _ = Elements([]byte(`[1`), func(int, []byte) error { return nil }) }},
		{`Unquote "`, func() { Unquote([]byte(`"`)) }},
		{`Unquote "\`, func() { Unquote([]byte(`"\"`)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("panic: %v", fmt.Sprint(r))
				}
			}()
			tc.f()
		})
	}
}
