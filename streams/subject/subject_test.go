package subject

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSubjects(t *testing.T) {
	s := Builder{Prefix: "khook"}
	raw, err := s.Raw("webhook", "deploy-failed")
	require.NoError(t, err)
	require.Equal(t, "khook.raw.webhook.deploy-failed", raw)
	ev, err := s.Events("pod_restart")
	require.NoError(t, err)
	require.Equal(t, "khook.events.pod_restart", ev)
	dlq, err := s.DLQ("mapper")
	require.NoError(t, err)
	require.Equal(t, "khook.dlq.mapper", dlq)
}

func TestSubjectsRejectBadTokens(t *testing.T) {
	s := Builder{Prefix: "khook"}
	for _, bad := range []string{"", "Deploy", "a.b", "a*", ">", "a b", "é", strings.Repeat("a", 129)} {
		_, err := s.Raw("webhook", bad)
		require.Error(t, err, "type %q", bad)
		require.Contains(t, err.Error(), "event type")
		_, err = s.Raw(bad, "x")
		require.Error(t, err, "source %q", bad)
		_, err = s.Events(bad)
		require.Error(t, err, "internal type %q", bad)
	}
}
