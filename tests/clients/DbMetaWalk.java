// DbMetaWalk: walk java.sql.DatabaseMetaData the way GUI clients (DBeaver,
// SQL Workbench/J, DataGrip) do at connect / in their navigator, and run a
// few queries that exercise pgjdbc's extended-protocol paths.
//
// Compile and run (no build tool):
//   javac -cp /usr/share/java/postgresql.jar -d /tmp/dbmetawalk tests/clients/DbMetaWalk.java
//   java -cp /tmp/dbmetawalk:/usr/share/java/postgresql.jar DbMetaWalk \
//        jdbc:postgresql://127.0.0.1:55439/sluice demo demo
//
// Output: one fact per line (`key=value`), greppable. Any SQLException in a
// step prints `ERROR step=<name> sqlstate=<state> message=<msg>` and the walk
// continues. Exit code 1 if any step failed, 0 otherwise.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class DbMetaWalk {
    private static int failures = 0;

    interface Step {
        void run() throws SQLException;
    }

    private static void step(String name, Step s) {
        try {
            s.run();
            System.out.println("OK step=" + name);
        } catch (SQLException e) {
            failures++;
            String msg = String.valueOf(e.getMessage()).replace('\n', ' ').replace('\r', ' ');
            System.out.println("ERROR step=" + name + " sqlstate=" + e.getSQLState() + " message=" + msg);
        } catch (RuntimeException e) {
            failures++;
            String msg = String.valueOf(e.getMessage()).replace('\n', ' ');
            System.out.println("ERROR step=" + name + " sqlstate=none message=" + e.getClass().getName() + ": " + msg);
        }
    }

    private static String str(String s) {
        return s == null ? "<null>" : s;
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: DbMetaWalk <jdbcUrl> <user> <password>");
            System.exit(2);
        }
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("ApplicationName", "DbMetaWalk");

        final Connection conn;
        try {
            conn = DriverManager.getConnection(args[0], props);
        } catch (SQLException e) {
            System.out.println("ERROR step=connect sqlstate=" + e.getSQLState() + " message=" + e.getMessage());
            System.exit(1);
            return;
        }
        System.out.println("OK step=connect");
        final DatabaseMetaData md = conn.getMetaData();

        step("productInfo", () -> {
            System.out.println("product_name=" + md.getDatabaseProductName());
            System.out.println("product_version=" + md.getDatabaseProductVersion());
            System.out.println("product_major=" + md.getDatabaseMajorVersion() + " product_minor=" + md.getDatabaseMinorVersion());
            System.out.println("driver=" + md.getDriverName() + " " + md.getDriverVersion());
            System.out.println("url=" + md.getURL());
            System.out.println("username=" + md.getUserName());
        });

        // DBeaver asks these right after connecting.
        step("connectionInfo", () -> {
            System.out.println("conn_catalog=" + str(conn.getCatalog()));
            System.out.println("conn_schema=" + str(conn.getSchema()));
            System.out.println("read_only=" + conn.isReadOnly());
            System.out.println("isolation=" + conn.getTransactionIsolation());
        });

        step("identifierInfo", () -> {
            System.out.println("identifier_quote=" + md.getIdentifierQuoteString());
            System.out.println("search_string_escape=" + md.getSearchStringEscape());
            System.out.println("sql_keywords_len=" + md.getSQLKeywords().length());
        });

        step("getCatalogs", () -> {
            try (ResultSet rs = md.getCatalogs()) {
                while (rs.next()) System.out.println("catalog=" + rs.getString("TABLE_CAT"));
            }
        });

        step("getSchemas", () -> {
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next())
                    System.out.println("schema=" + rs.getString("TABLE_SCHEM") + " catalog=" + str(rs.getString("TABLE_CATALOG")));
            }
        });

        step("getSchemasPattern", () -> {
            try (ResultSet rs = md.getSchemas(null, "%")) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("schemas_pattern_count=" + n);
            }
        });

        step("getTableTypes", () -> {
            try (ResultSet rs = md.getTableTypes()) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("table_types_count=" + n);
            }
        });

        step("getTables", () -> {
            try (ResultSet rs = md.getTables(null, "nyc", "%", null)) {
                while (rs.next())
                    System.out.println("table=" + rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
            }
        });

        step("getTablesTableView", () -> {
            try (ResultSet rs = md.getTables(null, "nyc", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next())
                    System.out.println("table_tv=" + rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
            }
        });

        step("getColumns", () -> {
            try (ResultSet rs = md.getColumns(null, "nyc", "trips", "%")) {
                while (rs.next())
                    System.out.println("column=" + rs.getString("TABLE_NAME") + "." + rs.getString("COLUMN_NAME") + " "
                            + rs.getString("TYPE_NAME") + " jdbc_type=" + rs.getInt("DATA_TYPE")
                            + " nullable=" + rs.getString("IS_NULLABLE") + " pos=" + rs.getInt("ORDINAL_POSITION"));
            }
        });

        step("getPrimaryKeys", () -> {
            try (ResultSet rs = md.getPrimaryKeys(null, "nyc", "trips")) {
                int n = 0;
                while (rs.next()) {
                    n++;
                    System.out.println("pk=" + rs.getString("TABLE_NAME") + "." + rs.getString("COLUMN_NAME"));
                }
                System.out.println("pk_count=" + n);
            }
        });

        step("getTypeInfo", () -> {
            try (ResultSet rs = md.getTypeInfo()) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("typeinfo_count=" + n);
            }
        });

        step("getImportedKeys", () -> {
            try (ResultSet rs = md.getImportedKeys(null, "nyc", "trips")) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("imported_keys_count=" + n);
            }
        });

        step("getExportedKeys", () -> {
            try (ResultSet rs = md.getExportedKeys(null, "nyc", "zones")) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("exported_keys_count=" + n);
            }
        });

        step("getIndexInfo", () -> {
            try (ResultSet rs = md.getIndexInfo(null, "nyc", "trips", false, true)) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("index_info_count=" + n);
            }
        });

        step("getProcedures", () -> {
            try (ResultSet rs = md.getProcedures(null, "nyc", "%")) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("procedures_count=" + n);
            }
        });

        step("getFunctions", () -> {
            try (ResultSet rs = md.getFunctions(null, "nyc", "%")) {
                int n = 0;
                while (rs.next()) n++;
                System.out.println("functions_count=" + n);
            }
        });

        step("selectCount", () -> {
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM nyc.trips")) {
                rs.next();
                System.out.println("count=" + rs.getLong(1));
                System.out.println("count_label=" + rs.getMetaData().getColumnLabel(1)
                        + " count_type=" + rs.getMetaData().getColumnTypeName(1));
            }
        });

        step("preparedCount", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM nyc.trips WHERE passenger_count > ?")) {
                ps.setInt(1, 2);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("prepared_count=" + rs.getLong(1));
                }
                // Run it again a few times: pgjdbc switches to a named server-side
                // statement after prepareThreshold (default 5) executions.
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, i % 4);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        if (sb.length() > 0) sb.append(',');
                        sb.append(i % 4).append(':').append(rs.getLong(1));
                    }
                }
                System.out.println("prepared_repeat=" + sb);
            }
        });

        step("preparedParamMetadata", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT vendor_id, fare_amount FROM nyc.trips WHERE fare_amount > ? LIMIT 3")) {
                System.out.println("param_count=" + ps.getParameterMetaData().getParameterCount());
                System.out.println("result_columns=" + ps.getMetaData().getColumnCount());
            }
        });

        step("fetchSizeCursor", () -> {
            boolean prev = conn.getAutoCommit();
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(100);
                try (ResultSet rs = st.executeQuery("SELECT * FROM nyc.trips LIMIT 1050")) {
                    long n = 0;
                    while (rs.next()) n++;
                    System.out.println("fetched_rows=" + n);
                }
                conn.commit();
            } finally {
                try {
                    conn.rollback();
                } catch (SQLException ignored) {
                }
                conn.setAutoCommit(prev);
            }
        });

        step("fetchSizePrepared", () -> {
            boolean prev = conn.getAutoCommit();
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM nyc.zones WHERE 1 = ?")) {
                ps.setFetchSize(100);
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    long n = 0;
                    while (rs.next()) n++;
                    System.out.println("fetched_prepared_rows=" + n);
                }
                conn.commit();
            } finally {
                try {
                    conn.rollback();
                } catch (SQLException ignored) {
                }
                conn.setAutoCommit(prev);
            }
        });

        try {
            conn.close();
        } catch (SQLException ignored) {
        }
        System.out.println("failures=" + failures);
        System.exit(failures > 0 ? 1 : 0);
    }
}
