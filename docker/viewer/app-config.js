// OHIF viewer configuration for the viewer profile (docker/compose.yaml), served by
// viewer-proxy (docker/viewer/nginx.conf) in place of the image's own app-config.js.
// One data source: viewer-orthanc's DICOMweb, at /dicom-web/ of the same origin.
const dicomWebRoot = `${window.location.origin}/dicom-web`;

window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  maxNumberOfWebWorkers: 3,
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'LLNM results (viewer-orthanc)',
        name: 'orthanc',
        qidoRoot: dicomWebRoot,
        wadoRoot: dicomWebRoot,
        wadoUriRoot: dicomWebRoot,
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
  defaultDataSourceName: 'orthanc',
};
