package mailbox

import "container/heap"

// A recipient syncs from several mailboxes. Each returns envelopes in the
// order they reached it, and a sender deposits in the order it sent, but
// each mailbox may hold a different part of a conversation: MergeOrders
// puts them into one order consistent with every mailbox's.

// MergeOrders merges several sequences into one that keeps the relative
// order of every sequence where they agree (Kahn's algorithm over the
// union of their successor edges). Where they conflict, or nothing
// constrains the choice, the element seen first wins.
func MergeOrders(lists [][][32]byte) [][32]byte {
	first := map[[32]byte]int{}
	var all [][32]byte
	for _, l := range lists {
		for _, h := range l {
			if _, ok := first[h]; !ok {
				first[h] = len(all)
				all = append(all, h)
			}
		}
	}
	succ := make([][]int, len(all))
	indeg := make([]int, len(all))
	edge := map[[2]int]bool{}
	for _, l := range lists {
		for i := 1; i < len(l); i++ {
			a, b := first[l[i-1]], first[l[i]]
			if a == b || edge[[2]int{a, b}] {
				continue
			}
			edge[[2]int{a, b}] = true
			succ[a] = append(succ[a], b)
			indeg[b]++
		}
	}
	// ready holds indices with no unplaced predecessor, smallest first.
	ready := &intHeap{}
	for i := range all {
		if indeg[i] == 0 {
			heap.Push(ready, i)
		}
	}
	placed := make([]bool, len(all))
	out := make([][32]byte, 0, len(all))
	next := 0 // for breaking cycles: the earliest unplaced element
	for len(out) < len(all) {
		var i int
		if ready.Len() > 0 {
			i = heap.Pop(ready).(int)
			if placed[i] {
				continue
			}
		} else {
			for placed[next] {
				next++
			}
			i = next // a cycle: the orders conflict
		}
		placed[i] = true
		out = append(out, all[i])
		for _, j := range succ[i] {
			indeg[j]--
			if indeg[j] == 0 && !placed[j] {
				heap.Push(ready, j)
			}
		}
	}
	return out
}

type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
