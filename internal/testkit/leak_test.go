package testkit

import "testing"

func TestBlockedIn(t *testing.T) {
	const mock = "github.com/libp2p/go-libp2p/p2p/net/mock."
	inMock := "goroutine 7 [select]:\nio.(*pipe).write(0x1)\n\t/go/src/io/pipe.go:86 +0x1e5\n" +
		"github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).transport(0x2)\n\t/mod/mock_stream.go:290 +0x411\n" +
		"created by github.com/libp2p/go-libp2p/p2p/net/mock.newStream in goroutine 6\n\t/mod/mock_stream.go:67 +0x168"
	ours := "goroutine 8 [chan receive]:\ngithub.com/sotto-im/sotto/node.(*Node).releaseLoop(0x1)\n\t/node/order.go:20 +0x1\n" +
		"created by github.com/sotto-im/sotto/node.(*Node).Start in goroutine 1\n\t/node/node.go:375 +0x1"
	if !blockedIn(inMock, mock) || blockedIn(ours, mock) {
		t.Fatal("blockedIn misclassifies")
	}
}
