import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes OCR requests in Kafka transactions, as an exactly-once Java service does (a
 * Kafka Streams app with processing.guarantee=exactly_once_v2 writes the same way): one
 * transactional.id, each group of lines in its own transaction, committed or aborted.
 * Nothing here knows ocr-stream beyond its README.
 *
 * Usage: java TransactionalProducer BOOTSTRAP TOPIC TRANSACTIONAL_ID [HOLD_S] < requests.tsv
 * Each input line: transaction number TAB commit|abort TAB task id TAB request JSON; lines
 * of one number form one transaction, in the order they first appear. With HOLD_S, the
 * last transaction stays open that many seconds after its records are written, before it
 * ends (a slow or stuck upstream service).
 * Each output line: task id TAB partition TAB offset TAB commit|abort, printed as soon as
 * the transaction's records are written, before it ends.
 */
public final class TransactionalProducer {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        Map<String, List<String[]>> transactions = StdinTsv.groupedByFirstField(4);
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, args[2]);
        props.put(ProducerConfig.CLIENT_ID_CONFIG, "interop-java-transactional");
        long holdMs = args.length > 3 ? (long) (Double.parseDouble(args[3]) * 1000) : 0;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            int left = transactions.size();
            for (List<String[]> transaction : transactions.values()) {
                left--;
                producer.beginTransaction();
                List<String> written = new ArrayList<>();
                for (String[] parts : transaction) {
                    RecordMetadata meta =
                            producer.send(new ProducerRecord<>(topic, parts[2], parts[3])).get();
                    written.add(parts[2] + "\t" + meta.partition() + "\t" + meta.offset()
                            + "\t" + parts[1]);
                }
                written.forEach(System.out::println);
                System.out.flush();
                if (left == 0 && holdMs > 0) {
                    Thread.sleep(holdMs);
                }
                if (transaction.get(0)[1].equals("commit")) {
                    producer.commitTransaction();
                } else {
                    producer.abortTransaction();
                }
            }
        }
    }
}
