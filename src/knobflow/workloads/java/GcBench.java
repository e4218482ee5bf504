/*
 * GcBench: an allocation-heavy JVM workload for knobflow's runtime-layer experiments.
 *
 * Each of --threads worker threads runs operations back to back for --warmup + --duration seconds;
 * only the operations of the last --duration seconds are measured. One operation:
 *
 *   1. looks a key up in a shared, striped LRU cache (skewed keys: 80% of the lookups go to 20% of
 *      the key space); a miss allocates an entry (a byte[] payload of 256 B to 2 KiB and a small
 *      record) and evicts the least recently used one: medium-lived objects that survive a few
 *      young collections, get promoted and then die in the old generation;
 *   2. builds a short-lived object graph (a list of small nodes with int[] arrays and a string)
 *      and folds it, with the cache entry's payload, into a checksum: pure young garbage;
 *   3. with probability 1/4, replaces a node of a long-lived graph (old objects then point to
 *      young ones: card marking, remembered sets, write barriers).
 *
 * The cache is filled to its capacity before the first operation. The live set is then about
 * (cache entries x average entry size) + the graph: about 300 MB with the defaults, growing towards
 * 450 MB as evicted entries wait in the old generation. A heap too small for it ends in
 * OutOfMemoryError: the program exits with status 3 (a failed trial). A heap barely large enough can
 * keep the JVM collecting nearly all the time: a watchdog exits with status 4 when the run takes more
 * than --watchdog seconds (default 2 x (warmup + duration) + 10).
 *
 * At the end it prints one JSON line:
 *   throughput_ops  operations per second over the measured window, all threads together
 *   p50_ms p99_ms p999_ms max_ms  latency of one operation (GC pauses included), milliseconds
 *   gc_count gc_time_ms  collections and collection time in the measured window, summed over the
 *                        GarbageCollectorMXBeans (for ZGC and Shenandoah, whose "Cycles" beans
 *                        count concurrent cycles, the time includes concurrent work)
 *   heap_max_mb     Runtime.maxMemory() in MiB (the effective -Xmx)
 *   ops elapsed_s threads
 *   gc              the collector names the JVM reported, comma-separated ("G1 Young Generation,...")
 *   vm              java.vm.name and java.vm.version
 *   jvm_args        the JVM's input arguments (command line, JAVA_TOOL_OPTIONS, @argfiles)
 *
 * Usage: java [JVM options] -cp CLASSES GcBench [--duration 8] [--warmup 2] [--threads 2]
 *             [--cache-entries 200000] [--entry-bytes 1024] [--graph-nodes 200000] [--garbage 48] [--seed 42]
 *             [--watchdog S]
 * Exit status: 0 with the JSON line, 2 for bad arguments, 3 out of memory, 4 the watchdog's limit.
 */

import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicReference;

public final class GcBench {

    static final class Entry {
        final long key;
        final byte[] payload;
        final long created;

        Entry(long key, byte[] payload, long created) {
            this.key = key;
            this.payload = payload;
            this.created = created;
        }
    }

    static final class Node {
        final long id;
        final int[] data;
        Node left;
        Node right;

        Node(long id, int width) {
            this.id = id;
            this.data = new int[width];
            for (int i = 0; i < width; i++) {
                data[i] = (int) (id * 31 + i);
            }
        }
    }

    /** One stripe of the LRU cache: a LinkedHashMap in access order, bounded. */
    static final class Segment extends LinkedHashMap<Long, Entry> {
        private static final long serialVersionUID = 1L;
        private final int capacity;

        Segment(int capacity) {
            super(capacity * 4 / 3 + 16, 0.75f, true);
            this.capacity = capacity;
        }

        @Override
        protected boolean removeEldestEntry(Map.Entry<Long, Entry> eldest) {
            return size() > capacity;
        }
    }

    /** A log-linear latency histogram of nanoseconds (16 sub-buckets per power of two), no allocation per record. */
    static final class Histogram {
        static final int SUB = 16;
        final long[] counts = new long[64 * SUB];
        long max;
        long total;

        void record(long nanos) {
            long v = Math.max(1, nanos);
            int exp = 63 - Long.numberOfLeadingZeros(v);
            int sub = exp < 4 ? (int) (v & (SUB - 1)) : (int) ((v >>> (exp - 4)) & (SUB - 1));
            counts[exp * SUB + sub]++;
            total++;
            if (v > max) {
                max = v;
            }
        }

        void add(Histogram other) {
            for (int i = 0; i < counts.length; i++) {
                counts[i] += other.counts[i];
            }
            total += other.total;
            max = Math.max(max, other.max);
        }

        /** The upper bound of the bucket holding quantile q, in nanoseconds (at most max). */
        long quantile(double q) {
            if (total == 0) {
                return 0;
            }
            long rank = (long) Math.ceil(q * total);
            long seen = 0;
            for (int i = 0; i < counts.length; i++) {
                seen += counts[i];
                if (seen >= rank) {
                    int exp = i / SUB;
                    int sub = i % SUB;
                    long upper = exp < 4 ? sub + 1 : ((long) (SUB + sub + 1)) << (exp - 4);
                    return Math.min(upper, max);
                }
            }
            return max;
        }
    }

    static final class Worker extends Thread {
        final GcBench bench;
        final SplittableRandom rnd;
        final Histogram histogram = new Histogram();
        long ops;
        long checksum;

        Worker(GcBench bench, int index, long seed) {
            super("gcbench-worker-" + index);
            this.bench = bench;
            this.rnd = new SplittableRandom(seed * 1_000_003L + index);
        }

        @Override
        public void run() {
            try {
                while (true) {
                    long start = System.nanoTime();
                    if (start >= bench.endAt || bench.failure.get() != null) {
                        return;
                    }
                    checksum += bench.operation(rnd);
                    long end = System.nanoTime();
                    if (start >= bench.measureFrom) {
                        histogram.record(end - start);
                        ops++;
                    }
                }
            } catch (OutOfMemoryError e) {
                bench.failure.compareAndSet(null, e);
            }
        }
    }

    final Segment[] segments;
    final long keySpace;
    final int entryBytes;
    final Node[] graph;
    final int garbage;
    final AtomicReference<Throwable> failure = new AtomicReference<>();
    volatile long measureFrom;
    volatile long endAt;

    GcBench(int cacheEntries, int entryBytes, int graphNodes, int garbage, long seed) {
        int stripes = 64;
        this.segments = new Segment[stripes];
        for (int i = 0; i < stripes; i++) {
            segments[i] = new Segment(Math.max(1, cacheEntries / stripes));
        }
        this.keySpace = Math.max(16, cacheEntries * 2L);
        this.entryBytes = entryBytes;
        this.garbage = garbage;
        this.graph = new Node[graphNodes];
        SplittableRandom r = new SplittableRandom(seed);
        for (int i = 0; i < graphNodes; i++) {
            graph[i] = new Node(i, 4);
        }
        for (int i = 0; i < graphNodes; i++) {
            graph[i].left = graph[r.nextInt(graphNodes)];
            graph[i].right = graph[r.nextInt(graphNodes)];
        }
    }

    /** Fill the cache to its capacity, so the live set is in place before the first operation. */
    void prefill(SplittableRandom rnd) {
        for (Segment seg : segments) {
            while (seg.size() < seg.capacity) {
                long key = rnd.nextLong(keySpace);
                seg.put(key, newEntry(key, rnd));
            }
        }
    }

    Entry newEntry(long key, SplittableRandom rnd) {
        int size = entryBytes / 4 + rnd.nextInt(Math.max(1, entryBytes * 3 / 2));
        byte[] payload = new byte[size];
        for (int i = 0; i < size; i += 64) {
            payload[i] = (byte) (key + i);
        }
        return new Entry(key, payload, System.nanoTime());
    }

    long operation(SplittableRandom rnd) {
        // 1. The cache: 80% of the lookups in the hottest 20% of the keys.
        long key = rnd.nextInt(10) < 8 ? rnd.nextLong(keySpace / 5) : keySpace / 5 + rnd.nextLong(keySpace - keySpace / 5);
        Segment seg = segments[(int) ((key * 0x9E3779B97F4A7C15L) >>> 58)];
        Entry e;
        synchronized (seg) {
            e = seg.get(key);
        }
        if (e == null) {
            e = newEntry(key, rnd);
            synchronized (seg) {
                seg.put(key, e);
            }
        }
        // 2. Short-lived garbage: a small graph built, walked and dropped.
        int n = garbage / 2 + rnd.nextInt(garbage);
        List<Node> tmp = new ArrayList<>(n);
        Node prev = null;
        for (int i = 0; i < n; i++) {
            Node node = new Node(key + i, 8);
            node.left = prev;
            tmp.add(node);
            prev = node;
        }
        long sum = 0;
        for (Node node : tmp) {
            sum += node.data[(int) (node.id & 7)] + (node.left == null ? 0 : node.left.id);
        }
        String label = "k" + key + ":" + sum;
        sum += label.hashCode();
        byte[] payload = e.payload;
        for (int i = 0; i < payload.length; i += 128) {
            sum += payload[i];
        }
        // 3. Old-to-young references: replace a node of the long-lived graph.
        if (rnd.nextInt(4) == 0) {
            int i = rnd.nextInt(graph.length);
            Node fresh = new Node(sum, 4);
            fresh.left = graph[rnd.nextInt(graph.length)];
            fresh.right = graph[rnd.nextInt(graph.length)];
            graph[i] = fresh;
            graph[rnd.nextInt(graph.length)].right = fresh;
        }
        return sum;
    }

    static long[] gcTotals() {
        long count = 0;
        long time = 0;
        for (GarbageCollectorMXBean bean : ManagementFactory.getGarbageCollectorMXBeans()) {
            count += Math.max(0, bean.getCollectionCount());
            time += Math.max(0, bean.getCollectionTime());
        }
        return new long[] {count, time};
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static String ms(long nanos) {
        return String.format(java.util.Locale.ROOT, "%.3f", nanos / 1e6);
    }

    public static void main(String[] args) throws InterruptedException {
        double duration = 8;
        double warmup = 2;
        int threads = 2;
        int cacheEntries = 200_000;
        int entryBytes = 1024;
        int graphNodes = 200_000;
        int garbage = 48;
        long seed = 42;
        double watchdog = 0;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + a);
            }
            String v = args[++i];
            try {
                switch (a) {
                    case "--duration": duration = Double.parseDouble(v); break;
                    case "--warmup": warmup = Double.parseDouble(v); break;
                    case "--threads": threads = Integer.parseInt(v); break;
                    case "--cache-entries": cacheEntries = Integer.parseInt(v); break;
                    case "--entry-bytes": entryBytes = Integer.parseInt(v); break;
                    case "--graph-nodes": graphNodes = Integer.parseInt(v); break;
                    case "--garbage": garbage = Integer.parseInt(v); break;
                    case "--seed": seed = Long.parseLong(v); break;
                    case "--watchdog": watchdog = Double.parseDouble(v); break;
                    default: usage("unknown option " + a);
                }
            } catch (NumberFormatException ex) {
                usage("not a number for " + a + ": " + v);
            }
        }
        if (!(duration > 0) || warmup < 0 || watchdog < 0 || threads < 1 || cacheEntries < 1 || entryBytes < 4 || graphNodes < 1
                || garbage < 2) {
            usage("out-of-range option value");
        }

        // A heap barely larger than the live set does not always end in OutOfMemoryError: the JVM
        // can spend nearly all its time collecting. The watchdog turns that into a failure too.
        final double limit = watchdog > 0 ? watchdog : 2 * (warmup + duration) + 10;
        Thread dog = new Thread(() -> {
            try {
                Thread.sleep((long) (limit * 1000));
            } catch (InterruptedException e) {
                return;
            }
            System.err.println("GcBench: the run did not finish within the watchdog's limit: the heap is too small"
                    + " for the live set (the JVM spends its time collecting)");
            System.err.flush();
            Runtime.getRuntime().halt(4);
        }, "gcbench-watchdog");
        dog.setDaemon(true);
        dog.start();
        String out;
        try {
            out = run(duration, warmup, threads, cacheEntries, entryBytes, graphNodes, garbage, seed);
        } catch (OutOfMemoryError e) {
            // Everything run() allocated is unreachable now: there is room to report.
            System.err.println("GcBench: out of memory: the heap is too small for the live set");
            System.err.flush();
            System.exit(3);
            return;
        }
        System.out.println(out);
        System.out.flush();
        System.exit(0);
    }

    /** One run; returns the JSON line. Throws OutOfMemoryError when the heap is too small. */
    static String run(double duration, double warmup, int threads, int cacheEntries, int entryBytes, int graphNodes,
            int garbage, long seed) throws InterruptedException {
        GcBench bench = new GcBench(cacheEntries, entryBytes, graphNodes, garbage, seed);
        bench.prefill(new SplittableRandom(seed ^ 0x5DEECE66DL));
        long now = System.nanoTime();
        bench.measureFrom = now + (long) (warmup * 1e9);
        bench.endAt = bench.measureFrom + (long) (duration * 1e9);
        Worker[] workers = new Worker[threads];
        for (int i = 0; i < threads; i++) {
            workers[i] = new Worker(bench, i, seed);
            workers[i].start();
        }
        // The GC counters at the start of the measured window.
        long sleep = (bench.measureFrom - System.nanoTime()) / 1_000_000;
        if (sleep > 0) {
            Thread.sleep(sleep);
        }
        long[] gcBefore = gcTotals();
        for (Worker w : workers) {
            w.join();
        }
        long[] gcAfter = gcTotals();
        Throwable failure = bench.failure.get();
        if (failure != null) {
            bench = null;
            workers = null;
            throw new OutOfMemoryError("in a worker: " + failure.getMessage());
        }

        Histogram all = new Histogram();
        long ops = 0;
        long checksum = 0;
        for (Worker w : workers) {
            all.add(w.histogram);
            ops += w.ops;
            checksum += w.checksum;
        }
        // Operations are counted when they start in [measureFrom, endAt): the window is the duration.
        double elapsed = (bench.endAt - bench.measureFrom) / 1e9;
        List<String> gcNames = new ArrayList<>();
        for (GarbageCollectorMXBean bean : ManagementFactory.getGarbageCollectorMXBeans()) {
            gcNames.add(bean.getName());
        }
        StringBuilder jvmArgs = new StringBuilder("[");
        for (String arg : ManagementFactory.getRuntimeMXBean().getInputArguments()) {
            if (jvmArgs.length() > 1) {
                jvmArgs.append(", ");
            }
            jvmArgs.append(json(arg));
        }
        jvmArgs.append(']');
        return "{"
                + "\"throughput_ops\": " + String.format(java.util.Locale.ROOT, "%.1f", ops / elapsed)
                + ", \"p50_ms\": " + ms(all.quantile(0.50))
                + ", \"p99_ms\": " + ms(all.quantile(0.99))
                + ", \"p999_ms\": " + ms(all.quantile(0.999))
                + ", \"max_ms\": " + ms(all.max)
                + ", \"gc_count\": " + (gcAfter[0] - gcBefore[0])
                + ", \"gc_time_ms\": " + (gcAfter[1] - gcBefore[1])
                + ", \"heap_max_mb\": " + (Runtime.getRuntime().maxMemory() / (1024 * 1024))
                + ", \"ops\": " + ops
                + ", \"elapsed_s\": " + String.format(java.util.Locale.ROOT, "%.3f", elapsed)
                + ", \"threads\": " + threads
                + ", \"gc\": " + json(String.join(",", gcNames))
                + ", \"vm\": " + json(System.getProperty("java.vm.name") + " " + System.getProperty("java.vm.version"))
                + ", \"jvm_args\": " + jvmArgs
                + ", \"checksum\": " + json(Long.toString(checksum))
                + "}";
    }

    static void usage(String why) {
        System.err.println("GcBench: " + why);
        System.err.println("usage: java [JVM options] -cp CLASSES GcBench [--duration S] [--warmup S] [--threads N]"
                + " [--cache-entries N] [--entry-bytes N] [--graph-nodes N] [--garbage N] [--seed N] [--watchdog S]");
        System.exit(2);
    }
}
