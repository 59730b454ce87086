package mailbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func hs(xs ...int) [][32]byte {
	out := make([][32]byte, len(xs))
	for i, x := range xs {
		out[i][0], out[i][1] = byte(x>>8), byte(x)
	}
	return out
}

func TestMergeOrders(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lists [][][32]byte
		want  [][32]byte
	}{
		{"one", [][][32]byte{hs(1, 2, 3)}, hs(1, 2, 3)},
		{"later part first", [][][32]byte{hs(21, 22, 23), hs(0, 1, 2, 21, 22)}, hs(0, 1, 2, 21, 22, 23)},
		{"disjoint halves", [][][32]byte{hs(5, 6), hs(1, 2)}, hs(5, 6, 1, 2)},
		{"interleaved", [][][32]byte{hs(1, 3, 5), hs(1, 2, 3, 4, 5)}, hs(1, 2, 3, 4, 5)},
		{"conflict resolved by first seen", [][][32]byte{hs(1, 2), hs(2, 1)}, hs(1, 2)},
		{"duplicates within a list", [][][32]byte{hs(1, 1, 2)}, hs(1, 2)},
		{"empty", nil, hs()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MergeOrders(tc.lists); !slices.Equal(got, tc.want) {
				t.Fatalf("MergeOrders = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestMergeOrdersRecoversSendOrder: mailboxes each holding an ordered,
// overlapping part of a conversation merge back to the send order.
func TestMergeOrdersRecoversSendOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		n := 1 + rng.IntN(300)
		var lists [][][32]byte
		for range 1 + rng.IntN(4) {
			var l []int
			for i := range n {
				if rng.IntN(4) != 0 {
					l = append(l, i)
				}
			}
			lists = append(lists, hs(l...))
		}
		// Every element is held somewhere, and consecutive elements share a
		// mailbox (as when deposits go to k mailboxes in send order).
		lists = append(lists, hs(seq(n)...))
		rng.Shuffle(len(lists), func(i, j int) { lists[i], lists[j] = lists[j], lists[i] })
		if got := MergeOrders(lists); !slices.Equal(got, hs(seq(n)...)) {
			t.Fatalf("trial %d: order not recovered: %v", trial, got[:min(10, len(got))])
		}
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func BenchmarkMergeOrders(b *testing.B) {
	lists := [][][32]byte{hs(seq(10000)...), hs(seq(10000)...), hs(seq(10000)...)}
	b.ReportAllocs()
	for b.Loop() {
		if len(MergeOrders(lists)) != 10000 {
			b.Fatal(fmt.Sprint("bad merge"))
		}
	}
}
