package org.tdmalerts.fhirserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.config.GeneratedDaoAndResourceProviderConfigR4;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.test.config.TestR4Config;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;

/**
 * A real FHIR R4 server for tdm-alerts' tests and demo: HAPI FHIR's JPA server (the persistence,
 * conditional create/update and transaction processing a hospital's HAPI-based server runs) over
 * an in-memory H2 database, configured as HAPI's own JPA tests configure it, served by Jetty at
 * http://127.0.0.1:PORT/fhir. Prints "listening PORT" once it answers; ends with its process.
 *
 * Usage: java -cp CLASSPATH org.tdmalerts.fhirserver.LocalFhirServer [PORT]  (0 or none: a free port)
 */
public final class LocalFhirServer {
	private LocalFhirServer() {}

	public static void main(String[] args) throws Exception {
		int port = args.length > 0 ? Integer.parseInt(args[0]) : 0;
		AnnotationConfigApplicationContext beans = new AnnotationConfigApplicationContext(
				TestR4Config.class, GeneratedDaoAndResourceProviderConfigR4.class);
		FhirContext fhir = beans.getBean(FhirContext.class);

		RestfulServer rest = new RestfulServer(fhir);
		rest.setDefaultResponseEncoding(EncodingEnum.JSON);
		rest.registerProviders(beans.getBean("myResourceProvidersR4", ResourceProviderFactory.class).createProviders());
		// Transactions (a Bundle POSTed to the base) are the system provider's.
		rest.registerProvider(beans.getBean(JpaSystemProvider.class));

		Server jetty = new Server();
		ServerConnector connector = new ServerConnector(jetty);
		connector.setHost("127.0.0.1");
		connector.setPort(port);
		jetty.addConnector(connector);
		ServletContextHandler context = new ServletContextHandler();
		context.setContextPath("/");
		context.addServlet(new ServletHolder(rest), "/fhir/*");
		jetty.setHandler(context);
		jetty.start();
		System.out.println("listening " + connector.getLocalPort());
		System.out.flush();
		jetty.join();
	}
}
