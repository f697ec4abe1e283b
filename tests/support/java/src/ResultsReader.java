import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import io.cloudevents.CloudEvent;
import io.cloudevents.SpecVersion;
import io.cloudevents.kafka.CloudEventDeserializer;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads ocr.progress and ocr.results following only the README's "Reading results" recipe:
 *
 * 1. Read both topics from the beginning (results may arrive after `completed`: another
 *    topic).
 * 2. Keep, for each results key `task_id/page`, the record with the highest `attempt`; on a
 *    tie the later one.
 * 3. A task is done when its final progress event has come (`completed` or `failed`) and,
 *    for `completed`, `pages_total` pages are held: of the completed event's attempt or
 *    later, or of any attempt when the event is `replayed` (it re-announces a run whose
 *    results were published before).
 *
 * Values are read through the CloudEvents Java SDK's Kafka binding (CloudEventDeserializer,
 * binary content mode), which refuses a record whose ce_* headers break the spec; each
 * event's attributes are checked besides (spec version, id, source, type, time, subject,
 * data content type). For each task the report also lists what a tracing estate looks at:
 * the sources, the `ocrconsumer` extension values, the extension names the SDK saw, and the
 * W3C traceparent header of every record ("" for a record without).
 *
 * Usage: java ResultsReader BOOTSTRAP PROGRESS_TOPIC RESULTS_TOPIC GROUP TIMEOUT_S OUT TASK...
 * Writes OUT: {"tasks": {id: {"done", "final", "pages": [result...], "sources": [...],
 * "consumers": [...], "extensions": [...], "traceparents": [...]}}, "events": n,
 * "cloudevent_errors": [...]}.
 */
public final class ResultsReader {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static final class Task {
        JsonNode finalEvent;
        final Map<Integer, JsonNode> pages = new TreeMap<>();
        final Map<Integer, long[]> rank = new HashMap<>();
        final Set<String> sources = new TreeSet<>();
        final Set<String> consumers = new TreeSet<>();
        final Set<String> extensions = new TreeSet<>();
        final Set<String> traceparents = new TreeSet<>();

        boolean done() {
            if (finalEvent == null) return false;
            if (!finalEvent.get("status").asText().equals("completed")) return true;
            int total = finalEvent.get("pages_total").asInt();
            boolean replayed = finalEvent.path("replayed").asBoolean(false);
            long attempt = finalEvent.get("attempt").asLong();
            long held = pages.values().stream()
                    .filter(p -> replayed || p.get("attempt").asLong() >= attempt).count();
            return held >= total;
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], progressTopic = args[1], resultsTopic = args[2];
        String group = args[3];
        long timeoutMs = Long.parseLong(args[4]) * 1000;
        Path out = Path.of(args[5]);
        Map<String, Task> tasks = new LinkedHashMap<>();
        for (int i = 6; i < args.length; i++) tasks.put(args[i], new Task());
        List<String> errors = new ArrayList<>();
        long events = 0;

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG,
                CloudEventDeserializer.class.getName());
        long deadline = System.currentTimeMillis() + timeoutMs;
        try (KafkaConsumer<String, CloudEvent> consumer = new KafkaConsumer<>(props)) {
            consumer.subscribe(List.of(progressTopic, resultsTopic));
            while (!tasks.values().stream().allMatch(Task::done)
                    && System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, CloudEvent> records;
                try {
                    records = consumer.poll(Duration.ofMillis(500));
                } catch (org.apache.kafka.common.errors.RecordDeserializationException e) {
                    errors.add("not a CloudEvent at " + e.topicPartition() + "@" + e.offset()
                            + ": " + e.getCause());
                    consumer.seek(e.topicPartition(), e.offset() + 1);
                    continue;
                }
                for (ConsumerRecord<String, CloudEvent> record : records) {
                    events++;
                    CloudEvent event = record.value();
                    if (event == null || event.getData() == null) {
                        errors.add("no event or no data at " + record.topic() + "@" + record.offset());
                        continue;
                    }
                    JsonNode value = JSON.readTree(event.getData().toBytes());
                    String problem = checkEvent(event, value, record.topic().equals(resultsTopic));
                    if (problem != null) errors.add(record.topic() + "@" + record.offset() + ": " + problem);
                    String taskId = value.get("task_id").asText();
                    Task task = tasks.get(taskId);
                    if (task == null) continue;
                    task.sources.add(String.valueOf(event.getSource()));
                    Object consumerId = event.getExtension("ocrconsumer");
                    task.consumers.add(consumerId == null ? "" : consumerId.toString());
                    task.extensions.addAll(event.getExtensionNames());
                    Header traceparent = record.headers().lastHeader("traceparent");
                    task.traceparents.add(traceparent == null || traceparent.value() == null
                            ? "" : new String(traceparent.value(), StandardCharsets.UTF_8));
                    if (record.topic().equals(progressTopic)) {
                        String status = value.get("status").asText();
                        if (status.equals("completed") || status.equals("failed")) {
                            task.finalEvent = value;
                        }
                    } else {
                        String key = record.key();
                        int page = Integer.parseInt(key.substring(key.lastIndexOf('/') + 1));
                        long[] rank = {value.get("attempt").asLong(), record.offset()};
                        long[] held = task.rank.get(page);
                        if (held == null || rank[0] > held[0]
                                || (rank[0] == held[0] && rank[1] > held[1])) {
                            task.rank.put(page, rank);
                            task.pages.put(page, value);
                        }
                    }
                }
            }
        }
        ObjectNode report = JSON.createObjectNode();
        ObjectNode tasksNode = report.putObject("tasks");
        for (Map.Entry<String, Task> entry : tasks.entrySet()) {
            Task task = entry.getValue();
            ObjectNode node = tasksNode.putObject(entry.getKey());
            node.put("done", task.done());
            node.set("final", task.finalEvent);
            ArrayNode pages = node.putArray("pages");
            task.pages.values().forEach(pages::add);
            task.sources.forEach(node.putArray("sources")::add);
            task.consumers.forEach(node.putArray("consumers")::add);
            task.extensions.forEach(node.putArray("extensions")::add);
            task.traceparents.forEach(node.putArray("traceparents")::add);
        }
        report.put("events", events);
        ArrayNode errorList = report.putArray("cloudevent_errors");
        errors.forEach(errorList::add);
        Files.writeString(out, JSON.writeValueAsString(report), StandardCharsets.UTF_8);
    }

    /** The CloudEvents 1.0 attributes every output event must carry; null when all hold. */
    private static String checkEvent(CloudEvent event, JsonNode value, boolean result) {
        if (event.getSpecVersion() != SpecVersion.V1) return "specversion " + event.getSpecVersion();
        if (event.getId() == null || event.getId().isEmpty()) return "empty id";
        if (event.getSource() == null || event.getSource().toString().isEmpty()) return "no source";
        String expected = result ? "ocr.page.result.v1" : "ocr.task.progress.v1";
        if (!expected.equals(event.getType())) return "type " + event.getType();
        if (event.getTime() == null) return "no time";
        if (!"application/json".equals(event.getDataContentType())) {
            return "datacontenttype " + event.getDataContentType();
        }
        if (!value.get("task_id").asText().equals(event.getSubject())) {
            return "subject " + event.getSubject();
        }
        for (String name : event.getExtensionNames()) {
            if (!name.matches("[a-z0-9]{1,20}")) return "extension name " + name;
        }
        return null;
    }
}
