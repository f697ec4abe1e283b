// Command gointerop publishes OCR requests and reads their progress with the
// three Go Kafka clients users run (franz-go, segmentio/kafka-go, IBM/sarama),
// configured only as ocr-stream's README tells a Go developer to.
//
//	gointerop produce BOOTSTRAP TOPIC < requests.tsv
//	  each input line: client TAB mode TAB codec TAB task id TAB request JSON
//	  (client franz-go|kafka-go|sarama; mode default|java|murmur2; codec default|zstd)
//	  each output line: task id TAB client TAB mode TAB codec TAB partition TAB offset
//	gointerop read BOOTSTRAP TOPIC GROUP TIMEOUT_S < task-ids
//	  reads TOPIC from the beginning with each client (group GROUP-<client>) until
//	  it saw a final progress event of every task id;
//	  each output line: client TAB task id TAB status TAB pages_total TAB replayed
//	gointerop murmur2 < keys
//	  each output line: the signed 32-bit murmur2 of the key
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

var clients = []string{"franz-go", "kafka-go", "sarama"}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "produce":
		if len(os.Args) != 4 {
			usage()
		}
		err = produceAll(os.Args[2], os.Args[3])
	case "read":
		if len(os.Args) != 6 {
			usage()
		}
		timeout, perr := strconv.Atoi(os.Args[5])
		if perr != nil {
			usage()
		}
		err = readAll(os.Args[2], os.Args[3], os.Args[4], time.Duration(timeout)*time.Second)
	case "murmur2":
		err = printMurmur2()
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gointerop:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gointerop produce BOOTSTRAP TOPIC | read BOOTSTRAP TOPIC GROUP TIMEOUT_S | murmur2")
	os.Exit(2)
}

func stdinLines() ([]string, error) {
	var lines []string
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 4<<20) // a request line carries an inline page
	for scanner.Scan() {
		if line := scanner.Text(); line != "" {
			lines = append(lines, line)
		}
	}
	return lines, scanner.Err()
}

func printMurmur2() error {
	keys, err := stdinLines()
	if err != nil {
		return err
	}
	for _, key := range keys {
		fmt.Println(int32(murmur2([]byte(key))))
	}
	return nil
}

// request is one input line of `produce`.
type request struct {
	client, mode, codec, taskID, value string
}

// group is the requests one producer instance sends: same client, mode and codec.
type group struct {
	client, mode, codec string
}

func parseRequests(lines []string) ([]group, map[group][]request, error) {
	var order []group
	byGroup := map[group][]request{}
	for _, line := range lines {
		parts := strings.SplitN(line, "\t", 5)
		if len(parts) != 5 {
			return nil, nil, fmt.Errorf("want 5 tab-separated fields: %.80q", line)
		}
		r := request{parts[0], parts[1], parts[2], parts[3], parts[4]}
		g := group{r.client, r.mode, r.codec}
		if _, seen := byGroup[g]; !seen {
			order = append(order, g)
		}
		byGroup[g] = append(byGroup[g], r)
	}
	return order, byGroup, nil
}

// delivered is where the broker put one record.
type delivered struct {
	partition int32
	offset    int64
}

func produceAll(bootstrap, topic string) error {
	lines, err := stdinLines()
	if err != nil {
		return err
	}
	order, byGroup, err := parseRequests(lines)
	if err != nil {
		return err
	}
	for _, g := range order {
		requests := byGroup[g]
		var placed []delivered
		switch g.client {
		case "franz-go":
			placed, err = produceFranz(bootstrap, topic, g, requests)
		case "kafka-go":
			placed, err = produceKafkaGo(bootstrap, topic, g, requests)
		case "sarama":
			placed, err = produceSarama(bootstrap, topic, g, requests)
		default:
			err = fmt.Errorf("unknown client %q", g.client)
		}
		if err != nil {
			return fmt.Errorf("%s %s %s: %w", g.client, g.mode, g.codec, err)
		}
		for i, r := range requests {
			fmt.Printf("%s\t%s\t%s\t%s\t%d\t%d\n", r.taskID, g.client, g.mode, g.codec,
				placed[i].partition, placed[i].offset)
		}
	}
	return nil
}

func unknownMode(g group) error {
	return fmt.Errorf("unknown mode %q or codec %q for %s", g.mode, g.codec, g.client)
}
