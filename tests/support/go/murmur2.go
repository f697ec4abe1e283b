package main

import "hash"

// murmur2 is Kafka's murmur2 as the Java client computes it for keyed records
// (org.apache.kafka.common.utils.Utils.murmur2), written from the algorithm:
// MurmurHash2 with seed 0x9747b28c, little-endian 4-byte words, the tail bytes
// folded in from the highest down.
func murmur2(data []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
	)
	h := seed ^ uint32(len(data))
	body := len(data) &^ 3
	for i := 0; i < body; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> 24
		k *= m
		h = h*m ^ k
	}
	tail := data[body:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// murmur2Hash is murmur2 as a hash.Hash32, the shape sarama's
// WithCustomHashFunction asks for. murmur2 is not incremental (the length is
// mixed in first), so Write buffers and Sum32 hashes the whole key.
type murmur2Hash struct{ buf []byte }

var _ hash.Hash32 = (*murmur2Hash)(nil)

func newMurmur2Hash() hash.Hash32 { return &murmur2Hash{} }

func (h *murmur2Hash) Write(p []byte) (int, error) {
	h.buf = append(h.buf, p...)
	return len(p), nil
}

func (h *murmur2Hash) Sum32() uint32 { return murmur2(h.buf) }

func (h *murmur2Hash) Sum(b []byte) []byte {
	s := h.Sum32()
	return append(b, byte(s>>24), byte(s>>16), byte(s>>8), byte(s))
}

func (h *murmur2Hash) Reset()         { h.buf = h.buf[:0] }
func (h *murmur2Hash) Size() int      { return 4 }
func (h *murmur2Hash) BlockSize() int { return 4 }
