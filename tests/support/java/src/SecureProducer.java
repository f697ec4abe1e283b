import java.io.FileInputStream;
import java.io.InputStream;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes OCR requests the way a Java service on a secured estate does: a KafkaProducer
 * whose connection (bootstrap.servers, security.protocol, sasl.*, ssl.*) comes from the
 * client properties file its operators hand out, StringSerializer for key and value,
 * key = task id. Nothing here knows ocr-stream beyond its README.
 *
 * Usage: java SecureProducer TOPIC < requests.tsv
 * Each input line: client properties file TAB pause before sending (ms) TAB task id TAB
 * request JSON. One producer per properties file, in the order the files first appear; a
 * pause keeps that producer (and its login) alive across it, as a long-running service's.
 * Each output line: task id TAB partition TAB offset.
 */
public final class SecureProducer {
    public static void main(String[] args) throws Exception {
        String topic = args[0];
        Map<String, List<String[]>> byClient = StdinTsv.groupedByFirstField(4);
        for (Map.Entry<String, List<String[]>> entry : byClient.entrySet()) {
            Properties props = new Properties();
            try (InputStream in = new FileInputStream(entry.getKey())) {
                props.load(in);
            }
            props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            props.put(ProducerConfig.ACKS_CONFIG, "all");
            props.putIfAbsent(ProducerConfig.CLIENT_ID_CONFIG, "secure-java-producer");
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
                for (String[] parts : entry.getValue()) {
                    long pauseMs = Long.parseLong(parts[1]);
                    if (pauseMs > 0) {
                        Thread.sleep(pauseMs);
                    }
                    RecordMetadata meta =
                            producer.send(new ProducerRecord<>(topic, parts[2], parts[3])).get();
                    System.out.println(parts[2] + "\t" + meta.partition() + "\t" + meta.offset());
                    System.out.flush();
                }
            }
        }
    }
}
