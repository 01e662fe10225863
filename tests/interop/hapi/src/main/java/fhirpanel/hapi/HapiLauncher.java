package fhirpanel.hapi;

import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.util.VersionUtil;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.util.thread.QueuedThreadPool;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.core.env.MapPropertySource;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;

/**
 * Starts HAPI FHIR's JPA server (R4, in-memory H2) on 127.0.0.1 and prints one ready line.
 *
 * <pre>
 * java -Xmx1g -jar fhirpanel-hapi.jar --port 0
 *   HAPI-READY http://127.0.0.1:41234/fhir (hapi 8.8.0, started in 31.2 s)
 * </pre>
 *
 * Options (each also an environment variable, HAPI_ + upper case with underscores):
 * --port (0 picks a free port; the ready line names it), --default-page-size (20),
 * --max-page-size (0 = no cap), --search-reuse-ms (60000: identical searches within this window
 * reuse the cached result), --search-expire-ms (3600000: a cached search unused this long is
 * deleted and its _getpages links answer 410; under a minute it is swept every second),
 * --subscriptions (resthook|none),
 * --job-maintenance-ms (2000: how often Batch2 jobs such as $export advance; HAPI's own is a
 * minute; 0 keeps that). The other defaults are those of hapi-fhir-jpaserver-starter. It listens on loopback only; stop it
 * with SIGTERM (the shutdown hook stops Jetty and closes the Spring context).
 */
public final class HapiLauncher {

	static final String READY_PREFIX = "HAPI-READY ";
	private static final String HOST = "127.0.0.1";

	private HapiLauncher() {}

	public static void main(String[] args) throws Exception {
		long started = System.nanoTime();
		Map<String, Object> options = parseOptions(args);
		int port = Integer.parseInt((String) options.get("port"));

		AnnotationConfigApplicationContext context = new AnnotationConfigApplicationContext();
		context.getEnvironment().getPropertySources().addFirst(new MapPropertySource("launcher", options));
		context.register(HapiServerConfig.class);
		context.refresh();

		Server jetty = newJetty(port, context.getBean(RestfulServer.class));
		Runtime.getRuntime().addShutdownHook(new Thread(() -> stop(jetty, context), "hapi-shutdown"));
		jetty.start();

		int actualPort = ((ServerConnector) jetty.getConnectors()[0]).getLocalPort();
		double seconds = (System.nanoTime() - started) / 1e9;
		PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
		out.printf(Locale.ROOT, "%shttp://%s:%d/fhir (hapi %s, started in %.1f s)%n",
				READY_PREFIX, HOST, actualPort, hapiVersion(), seconds);
		jetty.join();
	}

	private static Server newJetty(int port, RestfulServer restfulServer) {
		QueuedThreadPool threads = new QueuedThreadPool(32, 4);
		threads.setName("hapi-http");
		Server server = new Server(threads);
		ServerConnector connector = new ServerConnector(server);
		connector.setHost(HOST);
		connector.setPort(port);
		server.addConnector(connector);

		ServletContextHandler handler = new ServletContextHandler();
		handler.setContextPath("/");
		ServletHolder holder = new ServletHolder("hapi-fhir", restfulServer);
		holder.setInitOrder(1);
		handler.addServlet(holder, "/fhir/*");
		server.setHandler(handler);
		server.setStopAtShutdown(false);
		return server;
	}

	private static void stop(Server jetty, AnnotationConfigApplicationContext context) {
		try {
			jetty.stop();
		} catch (Exception e) {
			System.err.println("hapi: stopping Jetty failed: " + e);
		}
		context.close();
	}

	private static String hapiVersion() {
		return VersionUtil.getVersion();
	}

	/** --name value / --name=value, then HAPI_NAME from the environment, then the default. */
	static Map<String, Object> parseOptions(String[] args) {
		Map<String, String> defaults = new HashMap<>();
		defaults.put("port", "8080");
		defaults.put("default-page-size", "20");
		defaults.put("max-page-size", "0");
		defaults.put("search-reuse-ms", "60000");
		defaults.put("search-expire-ms", "3600000");
		defaults.put("subscriptions", "resthook");
		defaults.put("job-maintenance-ms", "2000");

		Map<String, String> given = new HashMap<>();
		for (int i = 0; i < args.length; i++) {
			String arg = args[i];
			if (!arg.startsWith("--")) {
				throw new IllegalArgumentException("unexpected argument: " + arg);
			}
			String name = arg.substring(2);
			String value;
			int eq = name.indexOf('=');
			if (eq >= 0) {
				value = name.substring(eq + 1);
				name = name.substring(0, eq);
			} else if (i + 1 < args.length) {
				value = args[++i];
			} else {
				throw new IllegalArgumentException("missing value for --" + name);
			}
			if (!defaults.containsKey(name)) {
				throw new IllegalArgumentException("unknown option --" + name + "; known: " + defaults.keySet());
			}
			given.put(name, value);
		}

		Map<String, Object> options = new HashMap<>();
		for (Map.Entry<String, String> entry : defaults.entrySet()) {
			String name = entry.getKey();
			String env = System.getenv("HAPI_" + name.toUpperCase(Locale.ROOT).replace('-', '_'));
			String value = given.getOrDefault(name, env != null && !env.isBlank() ? env : entry.getValue());
			options.put(name, value.trim());
		}
		for (String numeric : new String[] {"port", "default-page-size", "max-page-size", "search-reuse-ms",
				"search-expire-ms", "job-maintenance-ms"}) {
			long n = Long.parseLong((String) options.get(numeric));
			if (n < 0) {
				throw new IllegalArgumentException("--" + numeric + " must not be negative");
			}
		}
		return options;
	}
}
