import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes OCR requests the way a plain Java service would: KafkaProducer with
 * StringSerializer for key and value, key = task id, the default partitioner, and the
 * compression.type of each line. Nothing here knows ocr-stream beyond its README.
 *
 * Usage: java InteropProducer BOOTSTRAP TOPIC < requests.tsv
 * Each input line: codec TAB with-headers(0|1) TAB task id TAB request JSON.
 * Each output line: task id TAB partition TAB offset.
 */
public final class InteropProducer {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        Map<String, List<String[]>> byCodec = StdinTsv.groupedByFirstField(4);
        for (Map.Entry<String, List<String[]>> entry : byCodec.entrySet()) {
            Properties props = new Properties();
            props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            props.put(ProducerConfig.ACKS_CONFIG, "all");
            props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, entry.getKey());
            props.put(ProducerConfig.CLIENT_ID_CONFIG, "interop-java-" + entry.getKey());
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
                for (String[] parts : entry.getValue()) {
                    ProducerRecord<String, String> record =
                            new ProducerRecord<>(topic, parts[2], parts[3]);
                    if (parts[1].equals("1")) {
                        // What a traced Java service sends: W3C trace context, its own
                        // header, and one that is not UTF-8 at all.
                        record.headers().add("traceparent", ("00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                + "00f067aa0ba902b7-01").getBytes(StandardCharsets.UTF_8));
                        record.headers().add("x-origin", "java".getBytes(StandardCharsets.UTF_8));
                        record.headers().add("x-binary", new byte[] {(byte) 0xff, 0, (byte) 0xfe});
                    }
                    RecordMetadata meta = producer.send(record).get();
                    System.out.println(parts[2] + "\t" + meta.partition() + "\t" + meta.offset());
                }
            }
        }
    }
}
