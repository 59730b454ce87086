package api_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
)

// echo is a tiny bot: it subscribes to events and answers each incoming
// message with the same text, until ctx ends or it has answered n messages.
func echo(ctx context.Context, b api.Backend, n int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the subscription
	events, err := b.Subscribe(ctx)
	if err != nil {
		return err
	}
	for ev := range events {
		if ev.Type != api.EventMessage || ev.Message.Direction != api.DirectionIn {
			continue // our own replies, delivery states, sync progress
		}
		reply, err := b.Send(ctx, ev.Message.Contact, "echo: "+ev.Message.Text)
		if err != nil {
			return err
		}
		fmt.Printf("to %s: %s (%s)\n", reply.Contact, reply.Text, reply.State)
		if n--; n == 0 {
			return nil
		}
	}
	return ctx.Err()
}

// A bot talks to a running node through its data directory's socket. Here
// the node is the in-memory apitest backend, served on a temporary
// directory, and two messages arrive for the bot to answer.
func Example() {
	dataDir, err := os.MkdirTemp("", "sotto-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dataDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The node side: what `sotto run` does.
	node := apitest.New("echo-bot")
	socket, err := api.SocketPath(dataDir)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := api.ListenUnix(socket)
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.NewServer(node).Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	// The bot side.
	client, err := api.Dial(dataDir)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	done := make(chan error, 1)
	go func() { done <- echo(ctx, client, 2) }()

	// Two messages arrive once the bot listens.
	if err := node.WaitSubscribers(ctx, 1); err != nil {
		log.Fatal(err)
	}
	node.Receive("alice", "hello", api.ViaDirect)
	node.Receive("alice", "are you there?", api.ViaMailbox)
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output:
	// to alice: echo: hello (queued)
	// to alice: echo: are you there? (queued)
}
