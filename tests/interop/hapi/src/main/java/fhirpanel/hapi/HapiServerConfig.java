package fhirpanel.hapi;

import ca.uhn.fhir.batch2.api.IJobMaintenanceService;
import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.search.IStaleSearchDeletingSvc;
import ca.uhn.fhir.jpa.search.cache.DatabaseSearchCacheSvcImpl;
import ca.uhn.fhir.jpa.search.cache.ISearchCacheSvc;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ETagSupportEnum;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.aop.framework.AopProxyUtils;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;

/**
 * The Spring wiring of HAPI's JPA server: R4 DAOs and resource providers (JpaR4Config), the
 * shared JPA services (HapiJpaConfig), Batch2 (bulk export, reindex, merge), and in-memory
 * rest-hook subscriptions. Storage is an in-memory H2 database that lives as long as the JVM.
 */
@Configuration
@EnableTransactionManagement
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionChannelConfig.class,
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class
})
public class HapiServerConfig {

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		BasicDataSource dataSource = new BasicDataSource();
		dataSource.setDriver(new org.h2.Driver());
		// DB_CLOSE_DELAY=-1: the database lives until the JVM exits, not until the last connection closes
		dataSource.setUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
		dataSource.setUsername("sa");
		dataSource.setPassword("");
		dataSource.setMaxTotal(20);
		dataSource.setMaxWait(Duration.ofSeconds(30));
		return dataSource;
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(dataSource);
		Properties jpa = new Properties();
		jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		jpa.put("hibernate.hbm2ddl.auto", "update");
		jpa.put("hibernate.jdbc.batch_size", "20");
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		jpa.put("hibernate.cache.use_query_cache", "false");
		jpa.put("hibernate.cache.use_second_level_cache", "false");
		jpa.put("hibernate.cache.use_structured_entries", "false");
		jpa.put("hibernate.cache.use_minimal_puts", "false");
		jpa.put("hibernate.archive.scanner", "org.hibernate.boot.archive.scan.internal.DisabledScanner");
		jpa.put("hibernate.search.enabled", "false");
		factory.setJpaProperties(jpa);
		return factory;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public JpaStorageSettings storageSettings(
			@Value("${search-reuse-ms}") long searchReuseMillis,
			@Value("${search-expire-ms}") long searchExpireMillis) {
		JpaStorageSettings settings = new JpaStorageSettings();
		settings.setReuseCachedSearchResultsForMillis(searchReuseMillis == 0 ? null : searchReuseMillis);
		settings.setExpireSearchResultsAfterMillis(searchExpireMillis);
		settings.setAllowMultipleDelete(true);
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		settings.setJobFastTrackingEnabled(true);
		return settings;
	}

	/**
	 * Two of HAPI's once-a-minute jobs, run more often for tests. Batch2 jobs ($export, $reindex)
	 * advance a step per maintenance pass: every --job-maintenance-ms instead (0: HAPI's minute
	 * only), else an export of a few resources takes minutes. And when --search-expire-ms is under
	 * that minute, cached searches are swept every second with no slack, so an idle _getpages link
	 * answers 410 about that long after its last use instead of one to two minutes later.
	 */
	@Bean(destroyMethod = "shutdownNow")
	public ScheduledExecutorService hapiTicker(
			IJobMaintenanceService maintenance,
			IStaleSearchDeletingSvc staleSearches,
			ISearchCacheSvc searchCache,
			@Value("${job-maintenance-ms}") long maintenanceMillis,
			@Value("${search-expire-ms}") long searchExpireMillis) {
		ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor(runnable -> {
			Thread thread = new Thread(runnable, "hapi-ticker");
			thread.setDaemon(true);
			return thread;
		});
		if (maintenanceMillis > 0) {
			ticker.scheduleWithFixedDelay(
					() -> quietly("job maintenance", maintenance::triggerMaintenancePass),
					maintenanceMillis, maintenanceMillis, TimeUnit.MILLISECONDS);
		}
		if (searchExpireMillis < 60_000 && unproxied(searchCache) instanceof DatabaseSearchCacheSvcImpl database) {
			database.setCutoffSlackForUnitTest(0);
			ticker.scheduleWithFixedDelay(
					() -> quietly("stale search sweep", staleSearches::pollForStaleSearchesAndDeleteThem),
					1000, 1000, TimeUnit.MILLISECONDS);
		}
		return ticker;
	}

	/** The bean behind Spring's transactional proxy (an interface proxy here: no Spring Boot). */
	private static Object unproxied(Object bean) {
		Object target = AopProxyUtils.getSingletonTarget(bean);
		return target == null ? bean : unproxied(target);
	}

	private static void quietly(String what, Runnable task) {
		try {
			task.run();
		} catch (RuntimeException e) {
			System.err.println("hapi: " + what + " failed: " + e);
		}
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings(@Value("${subscriptions}") String subscriptions) {
		SubscriptionSettings settings = new SubscriptionSettings();
		if ("resthook".equals(subscriptions)) {
			settings.addSupportedSubscriptionType(
					org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType.RESTHOOK);
		} else if (!"none".equals(subscriptions)) {
			throw new IllegalArgumentException("--subscriptions must be resthook or none");
		}
		return settings;
	}

	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new MemoryBinaryStorageSvcImpl();
	}

	/** Email subscriptions are not offered; the subscription processor still asks for a sender. */
	@Bean
	public IEmailSender emailSender() {
		return email -> {
			throw new UnsupportedOperationException("email subscriptions are not supported here");
		};
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			BulkDataExportProvider bulkDataExportProvider,
			@Value("${default-page-size}") int defaultPageSize,
			@Value("${max-page-size}") int maxPageSize) {
		FhirContext fhirContext = systemDao.getContext();
		fhirContext.setNarrativeGenerator(new NullNarrativeGenerator());

		RestfulServer server = new RestfulServer(fhirContext);
		server.registerProviders(resourceProviders.createProviders());
		server.registerProvider(systemProvider);
		server.registerProvider(bulkDataExportProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capabilities.setImplementationDescription("HAPI FHIR R4 Server (fhirpanel interop, in-memory H2)");
		server.setServerConformanceProvider(capabilities);

		pagingProvider.setDefaultPageSize(defaultPageSize);
		pagingProvider.setMaximumPageSize(maxPageSize == 0 ? Integer.MAX_VALUE : maxPageSize);
		server.setPagingProvider(pagingProvider);

		server.setETagSupport(ETagSupportEnum.ENABLED);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(false);
		server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		return server;
	}
}
