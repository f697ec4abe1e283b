import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The interop producers' input: tab-separated lines on stdin, grouped by their first field. */
final class StdinTsv {
    private StdinTsv() {}

    /**
     * Each non-empty line split into at most `fields` fields (the last keeps any tabs),
     * grouped by the first field in the order the groups first appear.
     */
    static Map<String, List<String[]>> groupedByFirstField(int fields) throws IOException {
        Map<String, List<String[]>> groups = new LinkedHashMap<>();
        try (BufferedReader in = new BufferedReader(
                new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) continue;
                String[] parts = line.split("\t", fields);
                groups.computeIfAbsent(parts[0], k -> new ArrayList<>()).add(parts);
            }
        }
        return groups;
    }
}
