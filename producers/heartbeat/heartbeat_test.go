package heartbeat

import (
	"testing"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/producertest"
)

func TestConformance(t *testing.T) {
	producertest.Run(t, producertest.Case{
		Name:   Name,
		Build:  FromSpec,
		Config: "interval: 1h\nnamespace: ops\n",
		BadConfigs: map[string]string{
			"interval":  "interval: 10ms\nnamespace: ops\n",
			"namespace": "interval: 1m\nnamespace: \"\"\n",
			"intervall": "intervall: 1m\n",
		},
		// A heartbeat is emitted as soon as the plugin starts.
		Trigger: func(*testing.T, producers.EventSource) {},
	})
}
