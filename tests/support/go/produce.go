package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kgo"
)

const produceTimeout = 60 * time.Second

// produceFranz: kgo as the README says. mode default sets no partitioner;
// mode java names the README's alternative, StickyKeyPartitioner(nil).
func produceFranz(bootstrap, topic string, g group, requests []request) ([]delivered, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(bootstrap), kgo.DefaultProduceTopic(topic),
		kgo.ClientID("interop-franz-go-" + g.mode)}
	switch g.mode {
	case "default":
	case "java":
		opts = append(opts, kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	default:
		return nil, unknownMode(g)
	}
	switch g.codec {
	case "default": // snappy, then none for brokers without it
	case "zstd":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	default:
		return nil, unknownMode(g)
	}
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), produceTimeout)
	defer cancel()
	records := make([]*kgo.Record, len(requests))
	for i, r := range requests {
		records[i] = &kgo.Record{Key: []byte(r.taskID), Value: []byte(r.value)}
	}
	results := client.ProduceSync(ctx, records...)
	if err := results.FirstErr(); err != nil {
		return nil, err
	}
	placed := make([]delivered, len(records))
	for i, rec := range records { // ProduceSync fills in each record's partition and offset
		placed[i] = delivered{rec.Partition, rec.Offset}
	}
	return placed, nil
}

// produceKafkaGo: a kafka.Writer. mode default leaves Balancer nil (the Writer's
// RoundRobin); mode java sets kafka.Murmur2Balancer{}. All of a group's records
// go in one WriteMessages call, in input order, so RoundRobin's pattern shows.
func produceKafkaGo(bootstrap, topic string, g group, requests []request) ([]delivered, error) {
	byKey := map[string]delivered{}
	var mu sync.Mutex // Completion runs on each partition writer's own goroutine
	writer := &kafkago.Writer{
		Addr:         kafkago.TCP(bootstrap),
		Topic:        topic,
		RequiredAcks: kafkago.RequireAll, // the Writer's default is RequireNone: no offsets
		BatchTimeout: 10 * time.Millisecond,
		Completion: func(messages []kafkago.Message, err error) {
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, m := range messages {
				byKey[string(m.Key)] = delivered{int32(m.Partition), m.Offset}
			}
		},
	}
	switch g.mode {
	case "default":
	case "java":
		writer.Balancer = kafkago.Murmur2Balancer{}
	default:
		return nil, unknownMode(g)
	}
	switch g.codec {
	case "default": // none
	case "zstd":
		writer.Compression = compress.Zstd
	default:
		return nil, unknownMode(g)
	}
	messages := make([]kafkago.Message, len(requests))
	for i, r := range requests {
		messages[i] = kafkago.Message{Key: []byte(r.taskID), Value: []byte(r.value)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), produceTimeout)
	defer cancel()
	if err := writer.WriteMessages(ctx, messages...); err != nil {
		writer.Close()
		return nil, err
	}
	if err := writer.Close(); err != nil { // waits for the Completion calls
		return nil, err
	}
	placed := make([]delivered, len(requests))
	for i, r := range requests {
		d, ok := byKey[r.taskID]
		if !ok {
			return nil, fmt.Errorf("no delivery report for %s", r.taskID)
		}
		placed[i] = d
	}
	return placed, nil
}

// produceSarama: a SyncProducer. mode default keeps Config's default
// partitioner (NewHashPartitioner); mode java is the README's custom
// partitioner with our own murmur2; mode murmur2 is sarama's NewMurmur2Partitioner.
func produceSarama(bootstrap, topic string, g group, requests []request) ([]delivered, error) {
	config := sarama.NewConfig()
	config.ClientID = "interop-sarama-" + g.mode
	config.Producer.Return.Successes = true // SyncProducer needs it
	config.Producer.RequiredAcks = sarama.WaitForAll
	switch g.mode {
	case "default":
	case "java":
		config.Producer.Partitioner = sarama.NewCustomPartitioner(
			sarama.WithAbsFirst(), sarama.WithCustomHashFunction(newMurmur2Hash))
	case "murmur2":
		config.Producer.Partitioner = sarama.NewMurmur2Partitioner
	default:
		return nil, unknownMode(g)
	}
	switch g.codec {
	case "default": // none
	case "zstd":
		config.Producer.Compression = sarama.CompressionZSTD
	default:
		return nil, unknownMode(g)
	}
	producer, err := sarama.NewSyncProducer([]string{bootstrap}, config)
	if err != nil {
		return nil, err
	}
	defer producer.Close()
	placed := make([]delivered, len(requests))
	for i, r := range requests {
		partition, offset, err := producer.SendMessage(&sarama.ProducerMessage{
			Topic: topic, Key: sarama.StringEncoder(r.taskID), Value: sarama.StringEncoder(r.value),
		})
		if err != nil {
			return nil, err
		}
		placed[i] = delivered{partition, offset}
	}
	return placed, nil
}
