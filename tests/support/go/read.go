package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/IBM/sarama"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// progress is what a reader needs of a progress event (the record's value).
type progress struct {
	TaskID     string `json:"task_id"`
	Status     string `json:"status"`
	PagesTotal *int   `json:"pages_total"`
	Replayed   bool   `json:"replayed"`
}

func (p progress) final() bool {
	return p.Status == "completed" || p.Status == "failed" || p.Status == "cancelled"
}

// finals collects one reader's final events of the wanted tasks; done closes
// once every wanted task has one.
type finals struct {
	mu     sync.Mutex
	want   map[string]bool
	seen   map[string][]progress
	done   chan struct{}
	closed bool
}

func newFinals(taskIDs []string) *finals {
	f := &finals{want: map[string]bool{}, seen: map[string][]progress{}, done: make(chan struct{})}
	for _, t := range taskIDs {
		f.want[t] = true
	}
	return f
}

// add takes one record value; a value that is not a progress event is an error.
func (f *finals) add(value []byte) error {
	var p progress
	if err := json.Unmarshal(value, &p); err != nil {
		return fmt.Errorf("a progress value is not JSON: %w (%.120q)", err, value)
	}
	if !p.final() || !f.want[p.TaskID] {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[p.TaskID] = append(f.seen[p.TaskID], p)
	if !f.closed && len(f.seen) == len(f.want) {
		f.closed = true
		close(f.done)
	}
	return nil
}

func readAll(bootstrap, topic, groupPrefix string, timeout time.Duration) error {
	taskIDs, err := stdinLines()
	if err != nil {
		return err
	}
	readers := map[string]func(context.Context, string, string, string, *finals) error{
		"franz-go": readFranz, "kafka-go": readKafkaGo, "sarama": readSarama,
	}
	results := make([]*finals, len(clients))
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, client := range clients {
		results[i] = newFinals(taskIDs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			go func() { // a reader stops when it has every task, or at the deadline
				select {
				case <-results[i].done:
					cancel()
				case <-ctx.Done():
				}
			}()
			err := readers[client](ctx, bootstrap, topic, groupPrefix+"-"+client, results[i])
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				errs[i] = fmt.Errorf("%s: %w", client, err)
			}
			select {
			case <-results[i].done:
			default:
				fmt.Fprintf(os.Stderr, "gointerop: %s saw a final event of %d of %d tasks in %s\n",
					client, len(results[i].seen), len(taskIDs), timeout)
			}
		}()
	}
	wg.Wait()
	for i, client := range clients {
		ids := make([]string, 0, len(results[i].seen))
		for id := range results[i].seen {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			for _, p := range results[i].seen[id] {
				pages := "null"
				if p.PagesTotal != nil {
					pages = fmt.Sprint(*p.PagesTotal)
				}
				fmt.Printf("%s\t%s\t%s\t%s\t%t\n", client, id, p.Status, pages, p.Replayed)
			}
		}
	}
	return errors.Join(errs...)
}

// readFranz: a kgo group consumer from the start of the topic.
func readFranz(ctx context.Context, bootstrap, topic, groupID string, f *finals) error {
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumerGroup(groupID),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer client.Close()
	for ctx.Err() == nil {
		fetches := client.PollFetches(ctx)
		var failed error
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				failed = fmt.Errorf("fetching %s[%d]: %w", t, p, err)
			}
		})
		if failed != nil {
			return failed
		}
		for _, record := range fetches.Records() {
			if err := f.add(record.Value); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// readKafkaGo: a kafka.Reader in a consumer group from the first offset.
func readKafkaGo(ctx context.Context, bootstrap, topic, groupID string, f *finals) error {
	reader := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: []string{bootstrap}, GroupID: groupID, Topic: topic,
		StartOffset: kafkago.FirstOffset, MaxWait: 500 * time.Millisecond,
	})
	defer reader.Close()
	for {
		message, err := reader.ReadMessage(ctx)
		if err != nil {
			return err
		}
		if err := f.add(message.Value); err != nil {
			return err
		}
	}
}

// readSarama: a sarama ConsumerGroup from the oldest offset.
func readSarama(ctx context.Context, bootstrap, topic, groupID string, f *finals) error {
	config := sarama.NewConfig()
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	group, err := sarama.NewConsumerGroup([]string{bootstrap}, groupID, config)
	if err != nil {
		return err
	}
	defer group.Close()
	handler := &saramaHandler{finals: f}
	for ctx.Err() == nil { // Consume returns at every rebalance
		if err := group.Consume(ctx, []string{topic}, handler); err != nil {
			if errors.Is(err, sarama.ErrClosedConsumerGroup) {
				break
			}
			return err
		}
		if err := handler.failed(); err != nil {
			return err
		}
	}
	return ctx.Err()
}

type saramaHandler struct {
	finals *finals
	mu     sync.Mutex // ConsumeClaim runs once per partition, concurrently
	err    error
}

func (h *saramaHandler) failed() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *saramaHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *saramaHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *saramaHandler) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case message, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			if err := h.finals.add(message.Value); err != nil {
				h.mu.Lock()
				h.err = err
				h.mu.Unlock()
				return err
			}
			session.MarkMessage(message, "")
		case <-session.Context().Done():
			return nil
		}
	}
}
