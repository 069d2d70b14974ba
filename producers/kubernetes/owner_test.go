package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/khook/khook/internal/kubetest"
	"github.com/khook/khook/producers"
)

func createPod(t *testing.T, cs k8s.Interface, ns, name string, owner []metav1.OwnerReference) {
	t.Helper()
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, OwnerReferences: owner},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// The producer resolves each event's resource to its owning workload through a real API
// server: Pod → ReplicaSet → Deployment, Pod → Job → CronJob, a StatefulSet's Pod, and no
// owner for a bare Pod or a Pod that does not exist.
func TestEventsCarryTheirOwningWorkload(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs := clientset(t, c)
	ctx := context.Background()
	_, err := cs.AppsV1().ReplicaSets("default").Create(ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d8f", Namespace: "default", OwnerReferences: kubetest.ControlledBy("Deployment", "web")},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:1"}}},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.BatchV1().Jobs("default").Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "backup-2911", Namespace: "default", OwnerReferences: kubetest.ControlledBy("CronJob", "backup")},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "backup", Image: "registry.example/backup:1"}}}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	createPod(t, cs, "default", "web-5d8f-aaaaa", kubetest.ControlledBy("ReplicaSet", "web-5d8f"))
	createPod(t, cs, "default", "web-5d8f-bbbbb", kubetest.ControlledBy("ReplicaSet", "web-5d8f"))
	createPod(t, cs, "default", "backup-2911-ccccc", kubetest.ControlledBy("Job", "backup-2911"))
	createPod(t, cs, "default", "db-0", kubetest.ControlledBy("StatefulSet", "db"))
	createPod(t, cs, "default", "bare", nil)

	rec := &recorder{events: map[string]producers.Event{}}
	start(t, c, Config{MaxEventAge: 15 * time.Minute}, rec.emit)
	pods := map[string]string{
		"web-5d8f-aaaaa": "Deployment/web", "web-5d8f-bbbbb": "Deployment/web", "backup-2911-ccccc": "CronJob/backup",
		"db-0": "StatefulSet/db", "bare": "", "never-created": "",
	}
	for pod := range pods {
		r := row{name: pod, kind: "Pod", eventType: "Warning", reason: "BackOff", note: "Back-off restarting failed container"}
		ev := newEvent("ev-"+pod, "default", r)
		ev.Regarding.Name = pod
		_, err := cs.EventsV1().Events("default").Create(ctx, ev, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return len(rec.bySubject()) == len(pods) }, 30*time.Second, 10*time.Millisecond)
	for subject, ev := range rec.bySubject() {
		var data struct {
			Owner *Owner `json:"owner"`
		}
		require.NoError(t, json.Unmarshal(ev.Data, &data))
		pod := subject[len("default/Pod/"):]
		if pods[pod] == "" {
			require.Nil(t, data.Owner, pod)
			continue
		}
		require.NotNil(t, data.Owner, pod)
		require.Equal(t, pods[pod], data.Owner.Kind+"/"+data.Owner.Name, pod)
	}
}

// The owner cache holds at most ownerCacheSize objects, evicting the oldest, and a cached
// answer expires.
func TestOwnerCacheIsBounded(t *testing.T) {
	now := time.Now()
	o := newOwners(nil, zaptest.NewLogger(t))
	o.now = func() time.Time { return now }
	for i := range ownerCacheSize + 100 {
		o.put(ownerKey{"ns", "Pod", fmt.Sprint(i)}, Owner{Kind: "Deployment", Name: "web"}, ownerTTL)
	}
	require.Equal(t, ownerCacheSize, o.size())
	_, ok := o.get(ownerKey{"ns", "Pod", "0"})
	require.False(t, ok, "the oldest is evicted")
	got, ok := o.get(ownerKey{"ns", "Pod", fmt.Sprint(ownerCacheSize + 99)})
	require.True(t, ok)
	require.Equal(t, "web", got.Name)
	now = now.Add(ownerTTL + time.Second)
	_, ok = o.get(ownerKey{"ns", "Pod", fmt.Sprint(ownerCacheSize + 99)})
	require.False(t, ok, "expired")
}
